"""OpenMMLab plug-in: the loss modules in an MMEngine registry of scope ``bckd``.

An mmdet 3.x or mmrazor 1.x config loads it and names the losses by scope::

    custom_imports = dict(imports=["bckd_kernels.mm"], allow_failed_imports=False)
    loss_bcdl = dict(type="bckd.BCDLLoss", loss_weight=1.0)

The registry is a child of MMEngine's root ``MODELS``, like mmdet's and
mmrazor's own, so every OpenMMLab registry finds the modules by their scoped
names while unscoped names (mmdet's own ``GIoULoss``) keep meaning what they
meant. Needs ``mmengine`` (``pip install "bckd[mm]"``); ``import bckd_kernels``
never imports this module.
"""

try:
    from mmengine.registry import MODELS as MMENGINE_MODELS
    from mmengine.registry import Registry
except ImportError as exc:
    raise ImportError(f'bckd_kernels.mm needs mmengine ({exc}): pip install "bckd[mm]"') from exc

from .modules import BCDLLoss, GIoULoss, ILDLLoss

__all__ = ["MODELS"]

MODELS = Registry("model", parent=MMENGINE_MODELS, scope="bckd")
MODELS.register_module(module=BCDLLoss)
MODELS.register_module(module=GIoULoss)
MODELS.register_module(module=ILDLLoss)
