"""Write a shipped separator's ``card.json`` (what ``birdsep models`` shows) from measurements.

Nothing is measured here: the numbers come from the JSON written by
``separator_ablation.py --score MODEL --json`` (MoMi on held-out species) and
``track_purity.py --model MODEL --json`` (one bird per track), plus the training facts.

    .venv/bin/python benchmarks/write_card.py src/birdsep/models/separator_stft_m4 \\
        --momi momi.json --purity purity.json --key ~/birdsep-runs/stft_narrow_m4 \\
        --steps 9000 --cpu-hours 2.9 --audio-hours 4.08 --command "birdsep train-separator …"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EVAL = ("200 seeded 6 s mixtures of mixtures of 56 recordings of 38 species kept out of training "
        "(benchmarks/splits/heldout_species.txt), references band-limited to 11 kHz; 95 % bootstrap interval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="the shipped model's folder")
    ap.add_argument("--momi", required=True, help="JSON from separator_ablation.py --score … --json")
    ap.add_argument("--purity", default=None, help="JSON from track_purity.py … --json")
    ap.add_argument("--key", required=True, help="the model's name in those JSON files (as given to them)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--cpu-hours", type=float, required=True)
    ap.add_argument("--audio-hours", type=float, required=True)
    ap.add_argument("--command", default="", help="the training command(s)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    momi = json.loads(Path(args.momi).read_text())[args.key]
    card = {
        "momi_heldout_db": round(momi["11k"][0], 2), "momi_heldout_ci": [round(v, 2) for v in momi["11k"][1:]],
        "momi_heldout_full_db": round(momi["full"][0], 2) if momi.get("full") else None,
        "eval": EVAL,
        "training": {"steps": args.steps, "cpu_hours": args.cpu_hours, "audio_hours": args.audio_hours,
                     "command": args.command},
    }
    if args.purity:
        purity = json.loads(Path(args.purity).read_text())[args.key]
        card["track_purity"] = round(purity["mean"], 3)
        card["track_purity_min"] = round(purity["min"], 3)
        card["songs_on_track"] = round(purity["songs_on_track"], 3)
    if args.note:
        card["note"] = args.note
    out = Path(args.folder) / "card.json"
    out.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
