// Schemas of the bckd operators. Kernels register themselves per device in
// csrc/cpu and csrc/cuda, autograd in csrc/autograd.cpp; fake kernels live in
// bckd_kernels/_ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import bckd_kernels._C` loads this library, which runs the registrations
// below; the module itself holds nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(bckd, m) {
  m.def("bin_cls_distill(Tensor student, Tensor teacher, Tensor? weight, float beta) -> (Tensor loss, Tensor max_abs_diff)");
  m.def("_bin_cls_distill_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor? weight, float beta) -> Tensor");
  m.def("paired_giou(Tensor pred, Tensor target, float eps=1e-6) -> Tensor");
  m.def("_paired_giou_backward(Tensor grad, Tensor pred, Tensor target, float eps, bool[2] output_mask=[True, True]) -> (Tensor, Tensor)");
  m.def("dfl_giou_distill(Tensor student_reg, Tensor teacher_reg, int reg_max=16, float eps=1e-6) -> Tensor");
  m.def("_dfl_giou_distill_backward(Tensor grad, Tensor student_reg, Tensor teacher_reg, int reg_max, float eps) -> Tensor");
}
