"""The accountant's cost, stock Opacus PRV beside fedshield's (common/privacy/prv.py), in one run.

For a few site plans (sample rate, steps per round, rounds) prints, each measured side by
side with fresh caches:

- one epsilon of a site's history: stock ``PRVAccountant.get_epsilon`` vs fedshield's
  (first evaluation of a mechanism; a history already evaluated costs a dictionary look-up);
- the job's noise calibration: the bisection over stock PRV that fedshield used before vs
  fedshield's ``calibrate_noise``, with the noise multipliers both return;
- and that both epsilons are the same number.

    python -m benchmarks.accountant [--json runs/benchmarks/accountant.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PLANS = ((1.0, 1, 5), (0.5, 2, 5), (0.1, 10, 5), (0.02, 50, 5))  # (sample rate, steps per round, rounds)
TARGET, DELTA = 2.0, 1e-5


def _stock_epsilon(history: list[tuple[float, float, int]]) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=DELTA, eps_error=0.01))


def _stock_calibration(q: float, steps: int) -> float:
    """fedshield's calibration before (doubling, then bisection to 0.01 in epsilon) on stock PRV."""
    low, high = 0.0, 1.0
    while _stock_epsilon([(high, q, steps)]) > TARGET:
        low, high = high, 2 * high
    while high - low > 1e-4 * high:
        mid = 0.5 * (low + high)
        eps = _stock_epsilon([(mid, q, steps)])
        if eps <= TARGET:
            high = mid
            if TARGET - eps <= 0.01:
                break
        else:
            low = mid
    return high


def _clear() -> None:
    from common.privacy import prv

    prv.prv_epsilon.cache_clear()
    prv.rdp_per_step.cache_clear()


def _calibrate(q: float, steps: int) -> float:
    from common.privacy.accounting import calibrate_noise

    return calibrate_noise(target_epsilon=TARGET, delta=DELTA, sample_rate=q, steps=steps)


def _timed(fn, *args) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    from common.privacy.prv import prv_epsilon

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("runs/benchmarks/accountant.json"))
    args = parser.parse_args(argv)
    _stock_epsilon([(1.0, 0.5, 3)])  # imports
    rows = []
    print("python -m benchmarks.accountant " + " ".join(argv if argv is not None else sys.argv[1:]))
    head = ("plan", "epsilon: stock", "fedshield", "memo", "calibration: stock", "fedshield")
    print("{:<28} {:>15} {:>10} {:>8} {:>19} {:>10}".format(*head))
    for q, steps, rounds in PLANS:
        total = steps * rounds
        stock_eps, ours_eps, memo, stock_cal, ours_cal = [], [], [], [], []
        for _ in range(args.repeats):
            sigma = 1.2
            history = ((sigma, q, total),)
            t, e_stock = _timed(_stock_epsilon, list(history))
            stock_eps.append(t)
            _clear()
            t, e_ours = _timed(prv_epsilon, history, DELTA, 0.01)
            ours_eps.append(t)
            memo.append(_timed(prv_epsilon, history, DELTA, 0.01)[0])
            if abs(e_stock - e_ours) > 1e-6 * e_stock:  # the same bound (a wider FFT domain: see prv.py)
                raise SystemExit(f"epsilons differ: stock {e_stock} vs fedshield {e_ours}")
            t, s_stock = _timed(_stock_calibration, q, total)
            stock_cal.append(t)
            _clear()
            t, s_ours = _timed(_calibrate, q, total)
            ours_cal.append(t)
        row = {
            "sample_rate": q,
            "steps": total,
            "epsilon_stock_ms": 1e3 * statistics.median(stock_eps),
            "epsilon_fedshield_ms": 1e3 * statistics.median(ours_eps),
            "epsilon_memo_us": 1e6 * statistics.median(memo),
            "calibration_stock_ms": 1e3 * statistics.median(stock_cal),
            "calibration_fedshield_ms": 1e3 * statistics.median(ours_cal),
            "sigma_stock": s_stock,
            "sigma_fedshield": s_ours,
            "epsilon": e_ours,
        }
        rows.append(row)
        plan = f"q={q:g}, {total} steps"
        print(
            f"{plan:<28} {row['epsilon_stock_ms']:>12.1f} ms {row['epsilon_fedshield_ms']:>7.1f} ms "
            f"{row['epsilon_memo_us']:>5.0f} us {row['calibration_stock_ms']:>16.0f} ms "
            f"{row['calibration_fedshield_ms']:>7.0f} ms   (sigma {s_stock:.4f} vs {s_ours:.4f})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": "python -m benchmarks.accountant", "plans": rows}, indent=2) + "\n")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
