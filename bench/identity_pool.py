"""The no-op control for the generator comparison: a pool of the unpainted healthy sources.

::

    python bench/identity_pool.py --pool runs/nih-sample/compare-generators/pool-flow \
        --data ../shared/data/nih-sample --out runs/nih-sample/compare-generators/pool-identity

For every item of an existing pool (its ``items/`` records, as in ``provenance.csv``) it writes the item's healthy
source image as it entered the generator (read at the pool's image size, stored as the
same 8-bit PNG), with the item's mask and finding label, but nothing painted. Evaluated by
``jobs.evaluate`` like a generator's pool, it gives the floor of every realism measure:
what the two-sample test and FID see from the choice of sources, the resizing and the
storage alone. A generator is only as far from real as it is above this row. The items
are not gated (``reason`` is ``identity``), so the table reports no acceptance for it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.synthesis.pool import PoolWriter  # noqa: E402
from augment.data.io import read_image  # noqa: E402
from augment.data.nih import DataError, load_index  # noqa: E402

IDENTITY = "identity"


def build(pool: Path, data: Path, out: Path) -> int:
    """Write the control pool; returns the number of items. Finished items are kept (resumable)."""
    rows = PoolWriter(str(pool)).rows()  # the pool's own item records, typed
    if not rows:
        raise DataError(f"{pool} has no finished items (no provenance.csv or items/): --pool must be a jobs.augment pool")
    index = load_index(data)
    first = pool / ("images" if rows[0].accepted else "rejected") / rows[0].image
    size = read_image(first).shape[0]
    writer = PoolWriter(str(out))
    done = writer.done_ids()
    records = {r.image_index: r for r in index.records}
    for row in rows:
        if row.item_id in done:
            continue
        if row.source not in records:
            raise DataError(f"source {row.source} of item {row.item_id} is not in {data}: pass the folder the pool was made from")
        image = read_image(index.path(records[row.source]), size)
        mask = read_image(pool / "masks" / row.mask, size) > 0.5
        control = replace(row, mask_area=float(mask.mean()), prob_before=None, prob_after=None, accepted=True,
                          reason=IDENTITY, registration_ncc=None, generator_run=IDENTITY)
        writer.write_item(control, image, mask)
    writer.finalize(records)
    return len(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="a finished jobs.augment pool whose items to mirror")
    p.add_argument("--data", required=True, help="NIH-layout folder the pool's sources come from")
    p.add_argument("--out", required=True, help="the control pool to write")
    args = p.parse_args()
    try:
        n = build(Path(args.pool), Path(args.data), Path(args.out))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} unpainted items to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
