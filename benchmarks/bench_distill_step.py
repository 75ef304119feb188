"""Training cost of BCKD distillation: the fused ops against the reference losses, side by side.

    python benchmarks/bench_distill_step.py [--datasets fashion forest] [--repeat 9]

For each data set, with the student and teacher presets' detectors on one real
training batch of the preset's size:

- step: one whole distillation iteration (teacher forward under no_grad, student
  forward, ground-truth GFL losses, BCDL + ILDL on every level, backward, SGD step);
- losses: BCDL + ILDL alone, forward + backward, on fixed head maps.

Each is timed with backend="auto" (the fused C++/CUDA ops) and
backend="reference" (bckd_kernels.reference, eager PyTorch) alternately in one
run (median of --repeat, after warm-up), with the peak memory allocated above
the starting point (CUDA allocator on GPU, the profiler's allocation trace on CPU).
Weights are random (pretrained=False): they do not change the cost. It imports
bckd_train: run it where the package is installed (scripts/setup.sh installs it
editable) or with the repository root on PYTHONPATH.
"""

import argparse
import dataclasses
import statistics

import torch
from timing import environment, peak_extra_bytes

from bckd_train import distill, gfl, loading, runtime
from bckd_train.config import get_config
from bckd_train.model import GFL

COMPARED = ("auto", "reference")  # the backend arguments timed side by side


def setup(dataset, device):
    cfg = get_config(f"{dataset}_student")
    t_cfg = get_config(f"{dataset}_teacher")
    torch.manual_seed(0)
    student = GFL(dataclasses.replace(cfg.model, pretrained=False)).to(device)
    teacher = GFL(dataclasses.replace(t_cfg.model, pretrained=False)).to(device).eval()
    train, _ = loading.datasets(cfg)
    images, masks, targets = loading.load_batch(train, [(i, 0) for i in range(cfg.batch_size)])
    return cfg, student, teacher, images.to(device), masks.to(device), targets


def make_step(cfg, student, teacher, images, masks, targets, backend):
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    d = distill.Distiller(teacher, "bckd", backend=backend)
    kw = dict(strides=cfg.model.strides, reg_max=cfg.model.reg_max)

    def step():
        student.train()
        cls, reg = student(images)
        losses, extras = gfl.gfl_loss(cls, reg, targets, num_classes=cfg.model.num_classes, **kw)
        losses.update(d(images, masks, cls, reg, extras, weights=cfg.bckd, **kw))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def make_losses(cfg, student, teacher, images, masks, targets, backend):
    with torch.no_grad():
        cls, reg = student(images)
        t_cls, t_reg = teacher(images)
    _, extras = gfl.gfl_loss(cls, reg, targets, strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                             num_classes=cfg.model.num_classes)
    leaves = [x.detach().requires_grad_() for x in cls + reg]
    n = len(cls)

    def losses():
        s_cls, s_reg = leaves[:n], leaves[n:]
        out = distill.METHODS["bckd"].losses(distill.Maps(
            s_cls, s_reg, t_cls, t_reg, masks=masks, extras=extras, strides=cfg.model.strides,
            reg_max=cfg.model.reg_max, weights=cfg.bckd, backend=backend))
        sum(out.values()).backward()
        for x in leaves:
            x.grad = None

    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion", "forest"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--md", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    env = environment(device)
    lines = [f"Device: {env['device_name']} ({env['threads']} threads), torch {env['torch']}, commit {env['commit']}.",
             "", "| data set | batch | what | fused ms | reference ms | speed-up | fused peak MB | reference peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for dataset in args.datasets:
        cfg, student, teacher, images, masks, targets = setup(dataset, device)
        for what, factory in (("losses", make_losses), ("step", make_step)):
            fns = {b: factory(cfg, student, teacher, images, masks, targets, b) for b in COMPARED}
            times = {b: [] for b in COMPARED}
            for i in range(args.repeat + 2):
                for b in COMPARED:  # alternating: both see the same machine state
                    ms = runtime.timed(fns[b], device) * 1e3
                    if i >= 2:
                        times[b].append(ms)
            peaks = {b: peak_extra_bytes(fns[b], device) / 2**20 for b in COMPARED}
            med = {b: statistics.median(times[b]) for b in COMPARED}
            lines.append(f"| {dataset} | {cfg.batch_size} × {tuple(images.shape[-2:])} | {what} | {med['auto']:.1f} | "
                         f"{med['reference']:.1f} | {med['reference'] / med['auto']:.2f}x | {peaks['auto']:.1f} | "
                         f"{peaks['reference']:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
