"""How long the command line takes to answer, and whether it imported torch to do so.

    python scripts/cli_start_times.py [--repeats 5]

Each command runs in a fresh interpreter (``python -m temporal_sigprop.cli ...``, what the ``tsp``
script runs), ``--repeats`` times; the table gives the median and the slowest wall time, the exit
code, and whether torch was imported (read from one more run under ``python -X importtime``).
For scale, the same for ``python -c pass`` and ``python -c "import torch"``. Then the on-disk data
cache: ``get_task('mnist1d')`` timed in a fresh interpreter (after ``import torch``) with an empty
cache folder (generated) and again with the entry in place (read back), ``--repeats`` times each.

Wall times depend on the machine and its load (the load average is printed with the table); the
torch column does not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TASK = "cue_recall:delay=3,n_train=60,n_test=20"
COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["tasks"],
    ["tasks", "--json"],
    ["compare", "--help"],
    ["bench", "--help"],
    ["train", "--bogus"],
    ["train", "--method", "sigprob"],
    ["train", "--model", "gruu"],
    ["train", "--task", "mnist1dd"],
    ["train", "--batch-size", "0"],
    ["train", "--method", "eprop", "--model", "gru"],
    ["train", "--method", "sigprop", "--temperature", "0"],
    ["train", "--method", "tbptt", "--k", "0"],
    ["compare", "--preset", "quik"],
]
# torch is imported before the clock starts: the figure is the build (or the read) alone
BUILD_MNIST1D = ("import time, torch; from tasks import get_task; t = time.perf_counter(); "
                 "get_task('mnist1d'); print(time.perf_counter() - t)")


def _timed(argv: list[str], env: dict) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env)
    return time.perf_counter() - start, done.returncode


def _imports_torch(argv: list[str], env: dict) -> bool:
    done = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], capture_output=True,
                          text=True, env=env)
    # lines read "import time: self | cumulative | <indent>module"
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in done.stderr.splitlines()
               if line.startswith("import time:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{os.cpu_count()} CPU(s); python {sys.version.split()[0]}\n")
    print("| command | median s | max s | exit | torch imported |")
    print("|---|---|---|---|---|")
    rows = [(["python", "-c", "pass"], [sys.executable, "-c", "pass"]),
            (["python", "-c", "import torch"], [sys.executable, "-c", "import torch"])]
    rows += [(["tsp", *c], [sys.executable, "-m", "temporal_sigprop.cli", *c]) for c in COMMANDS]
    for shown, argv in rows:
        times, code = [], None
        for _ in range(args.repeats):
            seconds, code = _timed(argv, env)
            times.append(seconds)
        torch_loaded = _imports_torch(argv, env)
        print(f"| `{' '.join(shown)}` | {statistics.median(times):.2f} | {max(times):.2f} | "
              f"{code} | {'yes' if torch_loaded else 'no'} |")

    with tempfile.TemporaryDirectory() as folder:
        cache_env = {**env, "TSP_CACHE_DIR": folder}
        built, read = [], []
        for _ in range(args.repeats):
            for entry in os.listdir(folder):
                os.unlink(os.path.join(folder, entry))
            built.append(float(subprocess.run([sys.executable, "-c", BUILD_MNIST1D],
                                              capture_output=True, text=True, env=cache_env,
                                              check=True).stdout))
            read.append(float(subprocess.run([sys.executable, "-c", BUILD_MNIST1D],
                                             capture_output=True, text=True, env=cache_env,
                                             check=True).stdout))
    print(f"\nget_task('mnist1d') in a fresh interpreter (torch imported first), median of "
          f"{args.repeats}: empty cache {statistics.median(built):.2f} s (generated), entry "
          f"present {statistics.median(read):.2f} s (read back)")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
