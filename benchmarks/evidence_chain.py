"""Evidence chains against single-pass scoring at the same budget, on the held-out multi-hop sets.

For every held-out question of each multi-hop family (yes/no answers left out), the shipped
compressor runs once per ``--hops`` value at each rate (budget counted in SmolLM2 tokens);
a row reports answer recall (a gold answer string survives), seconds, and the paired
bootstrap interval of each hop count minus the single pass on the same questions.

    python benchmarks/evidence_chain.py --limit 100 --rates 1/8 --hops 1,2
"""

from __future__ import annotations

import argparse
import logging
import time
from fractions import Fraction

logger = logging.getLogger("evidence_chain")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100, help="questions per family")
    parser.add_argument("--rates", default="1/8", help="comma list of kept shares, e.g. 1/4,1/8")
    parser.add_argument("--hops", default="1,2", help="comma list of hop counts; 1 is the single-pass reference")
    parser.add_argument("--families", default=None, help="comma list (default: every held-out multi-hop family)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from tqdm.auto import tqdm

    from hyco_rag.compression import HyCoCompressor
    from hyco_rag.compression.training.data import holdout_multihop
    from hyco_rag.evaluation.parametric import bootstrap_diff
    from hyco_rag.metrics import answer_in_text
    from hyco_rag.models import load_tokenizer
    from hyco_rag.results import format_table, write_results

    torch.set_num_threads(args.threads)
    rates = [float(Fraction(r)) for r in args.rates.split(",")]
    hops_list = [int(h) for h in args.hops.split(",")]
    if 1 not in hops_list:
        parser.error("--hops must include 1 (the single-pass reference)")
    compressor, reader_tokenizer = HyCoCompressor.from_pretrained(), load_tokenizer()
    families = holdout_multihop()
    if args.families:
        families = {name: families[name] for name in args.families.split(",")}
    rows = []
    for name, examples in families.items():
        examples = [e for e in examples if any(a.lower() not in ("yes", "no") for a in e.answers)][: args.limit]
        for rate in rates:
            hits: dict[int, list[float]] = {}
            for hops in hops_list:
                started = time.perf_counter()
                hits[hops] = []
                for example in tqdm(examples, desc=f"{name} 1/{round(1 / rate)} hops={hops}", leave=False):
                    result = compressor.compress(
                        example.question,
                        [p.text for p in example.passages],
                        rate=rate,
                        target_tokenizer=reader_tokenizer,
                        hops=hops,
                    )
                    hits[hops].append(100.0 * answer_in_text("\n".join(result.texts), example.answers))
                row = {
                    "family": name,
                    "rate": rate,
                    "hops": hops,
                    "n": len(examples),
                    "recall": sum(hits[hops]) / max(1, len(examples)),
                    "seconds": time.perf_counter() - started,
                    "per_question": hits[hops],
                }
                if hops != 1:
                    row["minus_single_pass"] = bootstrap_diff(hits[hops], hits[1])
                rows.append(row)
                logger.info("%s", {k: v for k, v in row.items() if k != "per_question"})
    path = write_results("evidence_chain", rows, config=vars(args))
    print(format_table([{k: v for k, v in r.items() if k != "per_question"} for r in rows]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
