#!/usr/bin/env python3
"""A synthetic allowlist of N exact rules (default 10,000) for the idle-RSS figure.

    gen_allowlist.py OUT_FILE [N]

Each rule pins one made-up release (`bench-synth-NNNNN==1.0.N`) to two random sha256s (a wheel
and an sdist), the shape of a real exact pin. Seeded, so reruns write the same file.
"""

import random
import sys


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    rng = random.Random(691)
    with open(out, "w") as f:
        f.write(f"# {n} synthetic exact rules (bench/gen_allowlist.py)\n")
        for i in range(n):
            h1 = "%064x" % rng.getrandbits(256)
            h2 = "%064x" % rng.getrandbits(256)
            f.write(
                f'\n[[package]]\nname = "bench-synth-{i:05d}"\nversion = "1.0.{i}"\n'
                f'sha256 = [\n    "{h1}",\n    "{h2}",\n]\n'
            )


if __name__ == "__main__":
    main()
