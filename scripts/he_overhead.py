"""What homomorphic encryption costs per model update, for every task's network, measured side by side.

    python scripts/he_overhead.py [--tasks breast_wdbc prostate_seg ...]

Uses the CKKS parameters FLARE's HEBuilder provisions (poly modulus 8192, coefficient moduli [60, 40, 40], scale
2^40): 4096 values per ciphertext. For each network: parameters, plaintext float32 size, ciphertext size as sent
(serialized vectors, without the 0.66 MB public context FLARE's decomposer adds to each), encryption time at a site,
server-side addition of two encrypted updates (what aggregation does per site), decryption time, and the largest
absolute error after a round trip. Median of ``--repeats`` runs on this machine's CPU (TenSEAL has no GPU path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from oncofl.tasks import TASK_NAMES, get_task

SLOTS = 4096


def context():
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2**40
    return ctx


def measure(task: str, repeats: int) -> dict:
    import tenseal as ts

    network = get_task(task).build_network()
    values = np.concatenate([v.detach().float().numpy().ravel() for v in network.state_dict().values()])
    chunks = [values[i : i + SLOTS] for i in range(0, len(values), SLOTS)]
    ctx = context()
    encrypt_s, add_s, decrypt_s = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encrypted = [ts.ckks_vector(ctx, c.tolist()) for c in chunks]
        t1 = time.perf_counter()
        summed = [e + e for e in encrypted]
        t2 = time.perf_counter()
        decrypted = np.concatenate([np.asarray(e.decrypt()) for e in summed])
        t3 = time.perf_counter()
        encrypt_s.append(t1 - t0)
        add_s.append(t2 - t1)
        decrypt_s.append(t3 - t2)
    size = sum(len(e.serialize()) for e in encrypted)
    return {
        "task": task,
        "parameters": len(values),
        "plain_mb": values.nbytes / 1e6,
        "cipher_mb": size / 1e6,
        "ciphertexts": len(chunks),
        "encrypt_s": statistics.median(encrypt_s),
        "add_s": statistics.median(add_s),
        "decrypt_s": statistics.median(decrypt_s),
        "max_error": float(np.max(np.abs(decrypted - 2 * values))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(
        "| task network | parameters | plaintext MB | ciphertext MB (×) | ciphertexts | encrypt s | add s | "
        "decrypt s | max error |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        r = measure(task, args.repeats)
        print(
            f"| {r['task']} | {r['parameters']:,} | {r['plain_mb']:.2f} | {r['cipher_mb']:.1f} "
            f"({r['cipher_mb'] / r['plain_mb']:.0f}×) | {r['ciphertexts']} | {r['encrypt_s']:.2f} | {r['add_s']:.3f} | "
            f"{r['decrypt_s']:.2f} | {r['max_error']:.1e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
