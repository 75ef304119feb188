# BCKD for mmdet 3.x: GFL R-50 learns from GFL R-101 through mmrazor 1.x's
# SingleTeacherDistill, with the fused losses of bckd_kernels.mm.
#
#     pip install "bckd[mm]" mmrazor mmdet
#     mim train mmrazor bckd_gfl_r101_gfl_r50_1x_coco.py
#
# Per FPN level (P3–P7), BCDL on the classification logits and ILDL on the
# box-distribution logits, the ILDL weight max_k |σ(zt) − σ(zs)| computed from
# the same level's classification logits (student_cls / teacher_cls).
_base_ = [
    "mmdet::_base_/datasets/coco_detection.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["bckd_kernels.mm"], allow_failed_imports=False)

teacher_ckpt = (
    "https://download.openmmlab.com/mmdetection/v2.0/gfl/gfl_r101_fpn_mstrain_2x_coco/"
    "gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth"
)

# A distiller hands a loss only recorded tensors, not the head's positive count
# that normalises GFL's own losses, so each level's loss is summed and divided by
# a fixed A through loss_weight: about 131 positives per GPU for 2 COCO images
# (7.3 objects per image, ATSS selects about 0.2·k·L = 9 positives per object
# with k = 9, L = 5). Set it from your data's positive count.
positives_per_gpu = 131.0

# gfl_cls is shared by the levels and runs once per level (record_idx = level);
# scales.<level> multiplies that level's gfl_reg output, so its output is the
# head's regression logits.
recorders = dict(
    cls=dict(type="ModuleOutputs", source="bbox_head.gfl_cls"),
    **{f"reg{level}": dict(type="ModuleOutputs", source=f"bbox_head.scales.{level}") for level in range(5)},
)

model = dict(
    _scope_="mmrazor",
    type="SingleTeacherDistill",
    architecture=dict(cfg_path="mmdet::gfl/gfl_r50_fpn_1x_coco.py", pretrained=False),
    teacher=dict(cfg_path="mmdet::gfl/gfl_r101_fpn_ms-2x_coco.py", pretrained=False),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type="ConfigurableDistiller",
        student_recorders=recorders,
        teacher_recorders=recorders,
        distill_losses={
            **{
                f"loss_bcdl_p{level + 3}": dict(
                    type="bckd.BCDLLoss", reduction="sum", loss_weight=1.0 / positives_per_gpu
                )
                for level in range(5)
            },
            **{
                f"loss_ildl_p{level + 3}": dict(
                    type="bckd.ILDLLoss", reg_max=16, reduction="sum", loss_weight=4.0 / positives_per_gpu
                )
                for level in range(5)
            },
        },
        loss_forward_mappings={
            **{
                f"loss_bcdl_p{level + 3}": dict(
                    student=dict(from_student=True, recorder="cls", record_idx=level),
                    teacher=dict(from_student=False, recorder="cls", record_idx=level),
                )
                for level in range(5)
            },
            **{
                f"loss_ildl_p{level + 3}": dict(
                    student_reg=dict(from_student=True, recorder=f"reg{level}"),
                    teacher_reg=dict(from_student=False, recorder=f"reg{level}"),
                    student_cls=dict(from_student=True, recorder="cls", record_idx=level),
                    teacher_cls=dict(from_student=False, recorder="cls", record_idx=level),
                )
                for level in range(5)
            },
        },
    ),
)

find_unused_parameters = True
val_cfg = dict(_delete_=True, type="mmrazor.SingleTeacherDistillValLoop")
# GFL's schedule (SGD, lr 0.01 for 16 images) instead of schedule_1x's 0.02.
optim_wrapper = dict(optimizer=dict(lr=0.01))
