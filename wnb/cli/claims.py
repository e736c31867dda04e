"""``wnb claims``: does each finding of both papers hold on this model? Every claim of Sawmya et al. (W1-W7)
and Kong et al. (N1-N6) tested with its statistic, a 95% interval, the paper's number, a verdict by a rule
fixed in advance, and whether the run is comparable with the paper's: claims.csv, claims.json and one
self-contained page, claims.html."""
from __future__ import annotations

import time

from wnb.app.claims_page import session_page
from wnb.cli import setup
from wnb.cli.run_folder import RunFolder
from wnb.experiments.claim_runner import claims_frame, plan_dict
from wnb.experiments.claims import IDS, check_only, claim


def add_parser(sub, parents) -> None:
    """``wnb claims``' options."""
    p = sub.add_parser("claims", parents=parents, help="does each claim of both papers hold on this model?",
                       description="Test every claim of Sawmya et al. (ICLR 2025, W1-W7) and Kong et al. (ICLR 2026, "
                       "N1-N6) on the model: the statistic with its 95% interval, the paper's number, a verdict "
                       "(holds / reversed / not observed / inconclusive / not run) by a rule fixed in advance, and "
                       "the settings that differ from the paper's. --budget sets how much work each claim does "
                       "(small: minutes on a laptop CPU). Writes claims.csv, claims.json and claims.html.")
    p.add_argument("--only", nargs="+", default=None, metavar="ID", type=str.upper, choices=IDS,
                   help=f"only these claims ({' '.join(IDS)}; default: all)")


def validate(args) -> None:
    """``wnb claims``' own checks, before the model loads."""
    setup.validate(args, measures_perplexity=True)
    check_only(args.only)


def run(args, run: RunFolder, session) -> str:
    """Every claim of ``--only`` in turn (progress per claim), then the tables and the page."""
    ids = check_only(args.only)
    run.note(claims={"ids": ids, "plan": plan_dict(session.claims_plan())})
    rows = []
    for index, claim_id in enumerate(ids):
        start = time.perf_counter()
        if not args.quiet:
            print(f"[{index + 1}/{len(ids)}] {claim_id}: {claim(claim_id).claim}", flush=True)
        row = session.claim_row(claim_id, progress=not args.quiet)
        rows.append(row)
        if not args.quiet:
            print(f"    {row['verdict']}: {row.get('ours') or row.get('reason', '')} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
        run.note(claims_done=[r["id"] for r in rows])  # an interrupted run says how far it got
    table = claims_frame(rows)
    run.table("claims.csv", table, "one row per claim: statistic with its 95% interval (value, low, high), the "
              "paper's value, our number (ours), the verdict and its wording, the decision rule, comparable and the "
              "settings that differ from the paper's")
    run.json("claims.json", [_jsonable(r) for r in rows], "every row with its comparisons (detail) and settings")
    run.text("claims.html", session_page(session, rows), "the page: verdict table, then one section per claim with "
             "its figure, the paper's number beside ours, the rule and the settings that differ")
    counts = table["verdict"].value_counts()
    words = ", ".join(f"{int(counts[v])} {v}" for v in ("holds", "reversed", "not observed", "inconclusive",
                                                        "not run") if v in counts)
    comparable = int(table["comparable"].sum())
    return f"{len(rows)} claim(s) on {session.lm.name}: {words}; {comparable} comparable with the paper's setting"


def _jsonable(row: dict) -> dict:
    """A row for claims.json: its tables as lists of records."""
    out = {}
    for key, value in row.items():
        out[key] = value.to_dict(orient="records") if hasattr(value, "to_dict") else value
    return out
