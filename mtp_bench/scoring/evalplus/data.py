"""EvalPlus's data: the release files, their constants, and how MBPP+'s JSON arguments become the
call's arguments (`MBPP_INPUT_KINDS`, the table of EvalPlus's `mbpp_deserialize_inputs`)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from mtp_bench.api.errors import DataError, UnknownNameError
from mtp_bench.api.paths import data_dirs
from mtp_bench.execution.pool import hide_path

FILES = {"humaneval_plus": ("HumanEvalPlus-v0.1.10.jsonl.gz", 164), "mbpp_plus": ("MbppPlus-v0.2.0.jsonl.gz", 378)}


MIN_TIME_LIMIT_S = 4.0  # EvalPlus's DEFAULT_MIN_TIME_LIMIT


TIME_LIMIT_FACTOR = 4.0  # EvalPlus's DEFAULT_GT_TIME_LIMIT_FACTOR


TASK_TIMEOUT_CAP_S = 60.0  # EvalPlus's EVALPLUS_TIMEOUT_PER_TASK default


GROUND_TRUTH_TIMEOUT_S = 300.0  # one canonical solution on all of its inputs (Mbpp/255: ~15 s idle)


BIG_OUTPUT_BYTES = 1 << 20  # expected outputs whose pickle is larger are shipped as a sha256 digest


CHECK_MEMORY_MB = 4096  # address space of a check program: EvalPlus's 4 GiB (the sandbox's default is 2)


GROUND_TRUTH_VERSION = "2"  # bump when the ground-truth program changes (invalidates the cache)


JUDGE_PLAN_VERSION = "3"  # bump when the judged check program changes (invalidates `judge_plan`'s cache)


MBPP_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
               "intersection_array", "find_dissimilar", "Diff")


MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")


# MBPP+ task number -> how its JSON arguments become the call's arguments (program._prepare)
_KINDS: dict[str, tuple[int, ...]] = {
    "tuple_args": (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726,
                   740, 744, 809),
    "tuples_in_args": (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
    "tuples_in_first": (75, 413, 444, 753),
    "tuple_second": (106, 750),
    "sets_in_first": (115,),
    "float_complex": (124,),
    "tuple_first": (250, 405, 446, 617, 720, 763, 808),
    "tuple_of_tuples": (259, 401, 445),
    "tuple_of_mixed": (278,),
    "tuple_first_of_three": (307,),
    "dict_of_tuples": (722,),
    "complex_first": (252,),
    "all_tuples": (580, 615, 791),
}


MBPP_INPUT_KINDS: dict[int, str] = {n: kind for kind, ns in _KINDS.items() for n in ns}


def data_file(dataset: str, data_dir=None) -> Path:
    """Where the dataset's release file is (DataError naming every place looked at when nowhere)."""
    if dataset not in FILES:
        raise UnknownNameError(f"unknown EvalPlus dataset {dataset!r}; known: {', '.join(FILES)}")
    name = FILES[dataset][0]
    looked = []
    for d in data_dirs(data_dir):
        looked += [d] if d.is_file() else [d / "evalplus" / name, d / name]
    for p in looked:
        if p.is_file():
            hide_path(p)  # its canonical solutions and inputs: never visible to the sandboxed programs
            return p
    where = "looked in " + ", ".join(map(str, looked)) if looked else "no data directory was given"
    raise DataError(f"{dataset} data not found: {where}. Provide {name} with --data-dir DIR or "
                    f"MTP_BENCH_DATA=DIR (as DIR/evalplus/{name})")


def load_problems(dataset: str, data_dir=None) -> dict[str, dict]:
    """task_id -> problem (task_id, prompt, entry_point, canonical_solution, base_input, plus_input,
    atol, ...), in file order; every problem also gets `sha256` of the file it came from."""
    path = data_file(dataset, data_dir)
    raw = path.read_bytes()
    try:
        text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"could not read {dataset} from {path}: {type(e).__name__}: {e}") from None
    need = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")
    problems: dict[str, dict] = {}
    for i, row in enumerate(rows, 1):
        missing = [k for k in need if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"{path}: record {i} lacks {', '.join(missing)}")
        problems[row["task_id"]] = row
    expected = FILES[dataset][1]
    if len(problems) != expected:
        raise DataError(f"{path}: expected {expected} {dataset} problems, found {len(problems)}")
    digest = hashlib.sha256(raw).hexdigest()
    for p in problems.values():
        p["sha256"] = digest
    return problems


def input_kind(dataset: str, task_id: str) -> str | None:
    if dataset != "mbpp_plus":
        return None
    return MBPP_INPUT_KINDS.get(int(task_id.split("/")[-1]))
