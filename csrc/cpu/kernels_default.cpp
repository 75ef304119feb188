// Kernels for any CPU, with the compiler's baseline instruction set.
#define CPU_CAPABILITY DEFAULT
#include "kernels_impl.h"
