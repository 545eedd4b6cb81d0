"""A steady GPU load for the NVML check: `compute` (bf16 matrix products,
like prefill) or `memory` (device-to-device copies, like decode). Prints one
CSV line per window: unix time, mode, work per second (TFLOP/s or GB/s)."""
import sys
import time

import torch

mode, seconds = sys.argv[1], float(sys.argv[2])
window = 0.25
dev = torch.device("cuda")
if mode == "compute":
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    work_per_op, step = 2 * n**3 / 1e12, lambda: torch.matmul(a, b)
else:
    src = torch.empty(2 << 30, device=dev, dtype=torch.uint8)
    dst = torch.empty_like(src)
    work_per_op, step = 2 * src.numel() / 1e9, lambda: dst.copy_(src)
end = time.time() + seconds
ops, t0 = 0, time.time()
while time.time() < end:
    for _ in range(4):
        step()
    torch.cuda.synchronize()
    ops += 4
    now = time.time()
    if now - t0 >= window:
        print(f"{now:.3f},{mode},{ops * work_per_op / (now - t0):.2f}", flush=True)
        ops, t0 = 0, now
