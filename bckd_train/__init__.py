"""A thin GFocal (GFL) teacher-student detection package built on bckd_kernels."""
