"""How fast the auditors read the audit trail: the flat export (CSV vs Parquet) and one listing page.

Run by hand (not by the tests, which only check that it still runs on a tiny size):

    .venv/bin/python benchmarks/audit_export.py --records 2000 [--db postgresql+psycopg://…]

Builds a fresh trail (a temporary SQLite file unless ``--db`` is given, whose ``audit_records`` table
must then be empty) with ``--records`` prediction records shaped like the service's — every candidate
regimen of the catalogue × both outcomes, each with the base value and the SHAP value of every
feature of the default feature set, random numbers — and one access record between every ten. Then
times :func:`response_model.service.audit.start_export` + writing the file for each format, reading
it back with pandas, ``AuditTrail.verify`` (every MAC) and a page of 100 records through
:meth:`AuditTrail.select`; prints one table per stored form: ``plain`` (outputs and explanations as
JSON text, as before issue 14), ``inline`` (``zlib-json/1`` / ``packed-f64/3``: zlib + base64 inside
the fields, as written before side blobs) and ``packed`` (``zlib-json/2`` / ``packed-f64/4``: one
binary side blob, :mod:`response_model.service.audit.packing`), each with the records appended per
second, the bytes per prediction record (every column, the side blob's row included) and the µs to
pack and to unpack one record. The random SHAP values here are all distinct (the worst case for
packing); a real model's repeat across regimens, so real records pack far better
(``tests/test_trail_size.py``: ~6.7 KB for the smoke model). The chain key is the environment's, else
a throwaway one.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from response_model.features import feature_names
from response_model.privacy import AuditKeyError, AuditKeyring, audit_keyring
from response_model.regimens import load_catalogue
from response_model.service.audit import AuditTrail, TrailFilter, chain, compact_explanations, start_export
from response_model.service.audit.packing import unpack_field
from response_model.service.audit.records import audit_blobs, side_blobs

OUTCOMES = ("objective_response", "primary_resistance")


def candidate_count() -> int:
    """The number of candidate regimens of the catalogue (each record covers all of them)."""
    return sum(1 for r in load_catalogue().values() if r.is_candidate)


def synthetic_record(rng: np.random.Generator, regimens: list[str], features: list[str]) -> dict:
    """One accepted prediction record as the service writes it (random probabilities and SHAP values)."""
    outputs = {"genomics": "genotyped", "genomic_tests": [], "out_of_distribution_flagged": False, "regimens": {}}
    explanations = {}
    for rank, regimen in enumerate(regimens, start=1):
        estimates = {}
        for outcome in OUTCOMES:
            p = round(float(rng.uniform(0.02, 0.9)), 4)
            estimates[outcome] = {"probability": p,
                                  "interval": {"lower": max(0.0, p - 0.05), "upper": min(1.0, p + 0.05)},
                                  "band": "moderate"}
        outputs["regimens"][regimen] = {"rank": rank, "eligible": True, "ineligible_reason": None, **estimates}
        values = rng.normal(0.0, 0.1, len(features)).round(8)
        explanations[regimen] = {outcome: {"scale": "log-odds", "base_value": -1.2, "top": [],
                                           "values": dict(zip(features, values.tolist()))} for outcome in OUTCOMES}
    return {"endpoint": "POST /v1/predictions", "status": "accepted", "http_status": 200, "key_id": "0123456789ab",
            "role": "clinician", "model_name": "hcc-response", "model_version": "1",
            "input_digest": "0" * 64, "prediction_id": str(uuid.uuid4()), "regimens": regimens,
            "outputs": outputs, "explanations": compact_explanations(explanations)}  # as the service stores them


def build_trail(trail: AuditTrail, n: int, seed: int = 0) -> float:
    """Append ``n`` prediction records (and an access record after every ten); returns seconds."""
    rng = np.random.default_rng(seed)
    regimens = [r.name for r in load_catalogue().values() if r.is_candidate]
    features = list(feature_names())
    started = time.perf_counter()
    for start in range(0, n, 100):
        batch = []
        for i in range(start, min(n, start + 100)):
            batch.append(synthetic_record(rng, regimens, features))
            if i % 10 == 9:
                batch.append({"endpoint": "GET /v1/predictions", "status": "accepted", "http_status": 200,
                              "role": "auditor", "key_id": "ba9876543210", "detail": {"access": "list"}})
        trail.append_many(batch)
        print(f"\rbuilding the trail: {min(n, start + 100)}/{n} records", end="", file=sys.stderr)
    print(file=sys.stderr)
    return time.perf_counter() - started


def run(trail: AuditTrail) -> pd.DataFrame:
    """Time each export format and one listing page; returns the table."""
    rows = []
    for fmt in ("csv", "parquet"):
        started = time.perf_counter()
        export = start_export(trail, TrailFilter())
        prepared = time.perf_counter() - started
        buffer = io.BytesIO()
        for chunk in export.chunks(fmt):
            buffer.write(chunk)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        data = io.BytesIO(buffer.getvalue())
        frame = pd.read_csv(data) if fmt == "csv" else pd.read_parquet(data)
        read = time.perf_counter() - started
        rows.append({"what": f"export {fmt}", "records": export.n_records, "rows": len(frame),
                     "columns": len(frame.columns), "prepare_s": round(prepared, 3), "total_s": round(seconds, 2),
                     "records_per_s": round(export.n_records / seconds), "MB": round(buffer.tell() / 1e6, 1),
                     "pandas_read_s": round(read, 2)})
    started = time.perf_counter()
    verified = trail.verify()
    seconds = time.perf_counter() - started
    rows.append({"what": f"verify ({'intact' if verified.ok else verified.case})", "records": verified.n_records,
                 "rows": None, "columns": None, "prepare_s": None, "total_s": round(seconds, 2),
                 "records_per_s": round(verified.n_records / seconds), "MB": None, "pandas_read_s": None})
    started = time.perf_counter()
    page = trail.select(TrailFilter(), after_seq=trail.head_seq() // 2, kind="prediction", limit=101,
                        explanations=False)  # as GET /v1/predictions reads them
    seconds = time.perf_counter() - started
    rows.append({"what": "list page (100, mid-trail)", "records": min(100, len(page)), "rows": None, "columns": None,
                 "prepare_s": None, "total_s": round(seconds, 3), "records_per_s": round(len(page) / seconds),
                 "MB": None, "pandas_read_s": None})
    return pd.DataFrame(rows).astype({"rows": "Int64", "columns": "Int64"})


def _keyring() -> AuditKeyring:
    """The environment's audit keyring, else a throwaway key (the benchmark's trail is its own)."""
    try:
        return audit_keyring()
    except AuditKeyError:
        return AuditKeyring.of(os.urandom(32).hex())


def bytes_per_record(trail: AuditTrail) -> float:
    """The mean stored bytes (text as UTF-8, every column) of the trail's prediction records, each with
    its side blob's row (key and bytes; a blob is the record's own, nothing is amortised)."""
    import sqlalchemy as sa

    from response_model.service.audit import audit_records

    query = sa.select(audit_records).where(audit_records.c.endpoint.startswith("POST "))
    with trail.engine.connect() as conn:
        rows = conn.execute(query).all()
        blobs = side_blobs(conn, rows) if sa.inspect(conn).has_table(audit_blobs.name) else {}
    sizes = [sum(len(str(v).encode("utf-8")) for v in row if v is not None) for row in rows]
    return (sum(sizes) + sum(len(k) + len(v) for k, v in blobs.items())) / max(1, len(sizes))


def _squeeze(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 6)).decode("ascii")


def inline_fields(texts: dict) -> tuple[dict, None]:
    """``zlib-json/1`` / ``packed-f64/3``, as :mod:`~response_model.service.audit.packing` wrote them before
    side blobs (what ``chain.pack_fields`` returns, without a blob)."""
    out = dict(texts)
    if texts.get("outputs") is not None:
        out["outputs"] = chain.stored_json({"format": "zlib-json/1", "json": _squeeze(texts["outputs"].encode())})
    if texts.get("explanations") is not None:
        compact, where, floats = json.loads(texts["explanations"]), [], []
        for regimen, outcomes in compact["regimens"].items():
            for outcome, explanation in outcomes.items():
                where.append([regimen, outcome, len(explanation["values"])])
                floats.extend(explanation.pop("values"))
        rest = chain.stored_json({"value": compact, "values_at": where}).encode()
        out["explanations"] = chain.stored_json({"format": "packed-f64/3", "json": _squeeze(rest),
                                                 "values": _squeeze(np.asarray(floats, "<f8").tobytes())})
    return out, None


FORMS = ("plain", "inline", "packed")


@contextlib.contextmanager
def stored_form(form: str):
    """Write records ``packed`` (the trail's form), ``inline`` (the packed form before side blobs) or
    ``plain`` (as before packing: JSON text)."""
    saved, pack = chain.PACKED_FIELDS, chain.pack_fields
    chain.PACKED_FIELDS = () if form == "plain" else saved
    chain.pack_fields = inline_fields if form == "inline" else pack
    try:
        yield
    finally:
        chain.PACKED_FIELDS, chain.pack_fields = saved, pack


def codec_micros(form: str, repeats: int = 20) -> tuple[float, float]:
    """(µs to pack, µs to unpack) one synthetic record's outputs and explanations in ``form``, best of
    ``repeats`` (packing: from the record to its stored content; unpacking: from the stored texts)."""
    rng = np.random.default_rng(1)
    record = synthetic_record(rng, [r.name for r in load_catalogue().values() if r.is_candidate],
                              list(feature_names()))
    packs, unpacks = [], []
    with stored_form(form):
        for _ in range(repeats):
            started = time.perf_counter()
            content = chain.stored_content(record)
            packs.append(time.perf_counter() - started)
            blobs = dict([content[chain.SIDE_BLOB]]) if content.get(chain.SIDE_BLOB) else {}
            started = time.perf_counter()
            for name in chain.PACKED_FIELDS or ("outputs", "explanations"):
                unpack_field(name, json.loads(content[name]), blobs)
            unpacks.append(time.perf_counter() - started)
    return min(packs) * 1e6, min(unpacks) * 1e6


def measure(url: str, n: int, form: str) -> tuple[float, float, pd.DataFrame]:
    """(records appended per second, bytes per prediction record, the export table) of a fresh
    trail at ``url`` written in ``form``."""
    with tempfile.TemporaryDirectory(prefix="audit-witness-") as folder, \
            AuditTrail(url, keyring=_keyring(), witness=Path(folder) / "witness.jsonl") as trail, stored_form(form):
        if trail.count():
            raise SystemExit(f"{trail.url} already holds an audit trail; give an empty database")
        built = build_trail(trail, n)
        return n / built, bytes_per_record(trail), run(trail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000, help="prediction records in the trail (default 2000)")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL of an empty database (default: temporary SQLite)")
    parser.add_argument("--form", choices=("all", *FORMS), default="all",
                        help="stored form of outputs and explanations (default all, side by side)")
    args = parser.parse_args(argv)
    forms = FORMS if args.form == "all" else (args.form,)
    if args.db and len(forms) > 1:
        parser.error("with --db give one --form (each form needs an empty database)")
    summary = []
    for form in forms:
        with tempfile.TemporaryDirectory(prefix="audit-export-bench-") as folder:
            url = args.db or f"sqlite:///{Path(folder) / 'trail.db'}"
            rate, size, table = measure(url, args.records, form)
        pack, unpack = codec_micros(form)
        print(f"audit trail ({form}): {args.records} prediction records × {len(OUTCOMES)} outcomes × every "
              f"candidate regimen on {url.split(':')[0]}; {os.cpu_count()} CPUs; appended {rate:.0f} records/s; "
              f"{size / 1000:.1f} KB per prediction record")
        print(table.to_string(index=False))
        exports = table.set_index("what")["records_per_s"]
        summary.append({"form": form, "KB_per_record": round(size / 1000, 1), "append_records_per_s": round(rate),
                        "export_csv_records_per_s": exports["export csv"],
                        "export_parquet_records_per_s": exports["export parquet"],
                        "pack_us": round(pack), "unpack_us": round(unpack)})
    print("side by side (random SHAP values: the worst case for packing)")
    print(pd.DataFrame(summary).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
