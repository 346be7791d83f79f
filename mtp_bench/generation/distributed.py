"""Data-parallel evaluation under torchrun: `torchrun --nproc_per_node N -m mtp_bench run ...`.

Every rank runs the same command, loads the models on its own device (`cuda:LOCAL_RANK`, or the
CPU) and joins one gloo process group: only small Python objects (prompts, completions) cross
it, never tensors, so gloo serves CPU and GPU runs alike and NCCL is not needed.

What is sharded is generation, at the level of `RunContext.generate`, not each evaluator:
    1) rank 0 runs the evaluators exactly as a single process would. When one asks for
       generations, rank 0 serves what the cache holds and broadcasts the misses
    2) every rank (rank 0 included) generates the misses whose sample id hashes to it
       (`shard_of`: sha256 of the sample id, modulo N; all samples of a problem stay together),
       batch by batch, and appends each batch to its own cache file as soon as it is done
    3) rank 0 gathers the generations, puts them back in request order and carries on: it
       extracts, executes, scores and writes the result and samples files itself, so they are
       those of a single process by construction. Other ranks wait for the next request
Why there rather than inside each evaluator: generation is what costs GPU time, every generative
evaluator already goes through `ctx.generate`, and per-sample seeds make an output independent of
the batch and of the rank it lands on; evaluators stay unaware of ranks, and their metrics are
computed once over all records instead of merged from per-rank partial aggregates. What this
costs: evaluators that do not generate run on rank 0 alone while the others wait. That includes
the timing evaluators (`specdec`: its figures are rank 0's device's, measured while the other
ranks are idle), forward-only ones (`heads`) and sandboxed execution (which uses all of the
node's cores from rank 0).

The generation cache is per rank (`mtp_bench.generation.cache.open_run_cache`): rank 0 writes
generations.jsonl, rank r generations.rank{r}.jsonl, and rank 0 (or a single process) reads them
all, so a killed multi-rank run resumes with any number of ranks. Across nodes, give a
`--work-dir` on a shared file system, or a resumed run regenerates what other nodes cached.

A failure on one rank ends the run: the rank exits and torchrun stops the others. A generation
error on a worker is sent back to rank 0 and raised there.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from typing import Any

from mtp_bench.api.errors import ConfigError, UserError
from mtp_bench.generation import engine
from mtp_bench.generation.cache import MissingGeneration, generate_batches
from mtp_bench.generation.engine import Generation, GenerationConfig
from mtp_bench.models.device import device_name

BACKEND = "gloo"
# Workers wait for rank 0 through all the work that is not generation (sandboxed execution of
# 200 samples x 164 problems, timing evaluators), so the collective timeout is long; a rank that
# dies does not leave the others waiting on it: torchrun stops them.
TIMEOUT = datetime.timedelta(hours=24)
SHARDING = "sha256(sample_id) mod world_size"


def shard_of(sample_id: str, world_size: int) -> int:
    """The rank that generates every sample of `sample_id`: a function of the id and N only,
    never of the order or the batch a request comes in.

    >>> shard_of("HumanEval/0", 1)
    0
    >>> [shard_of(f"HumanEval/{i}", 2) for i in range(6)] == [shard_of(f"HumanEval/{i}", 2) for i in range(6)]
    True
    """
    h = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "little") % int(world_size)


def is_worker() -> bool:
    """True in a torchrun rank > 0, from the environment (before the group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("RANK", "0") not in ("", "0")


def rank_device(device: str | None, local_rank: int) -> Any:
    """This rank's device: `cuda:LOCAL_RANK` for --device cuda (the default when CUDA is there),
    the CPU for --device cpu. An explicit cuda:N would put every rank on one GPU: refused."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None
    if d.type == "cpu":
        return d
    if d.type != "cuda":
        raise ConfigError(f"--device {device} is not supported under torchrun; give --device cuda or cpu")
    if d.index is not None:
        raise ConfigError(f"under torchrun every rank takes cuda:LOCAL_RANK; give --device cuda, not {device}")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                          "--nproc_per_node must not exceed the GPUs per node")
    return torch.device("cuda", local_rank)


def from_env(device: str | None) -> Group | None:
    """The process group when torchrun (or any launcher setting WORLD_SIZE > 1, RANK,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) started this process; None for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    try:
        int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except (KeyError, ValueError):
        raise UserError(f"WORLD_SIZE={world_size} but RANK/LOCAL_RANK are not set: start with torchrun") from None
    dev = rank_device(device, local_rank)
    import torch
    import torch.distributed as dist

    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(BACKEND, timeout=TIMEOUT)
    return Group(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev)


class Group:
    """This process's place in the run, and the collectives of the module docstring."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: Any) -> None:
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device
        self.devices: list[str] = []  # every rank's device in words, filled by ready()
        self.generated_per_rank = [0] * world_size  # generations made by each rank (rank 0's count)
        self._serving = False  # rank 0: the workers are in serve() and wait for a request or stop

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    # -- collectives ------------------------------------------------------------------------

    def _broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _gather(self, obj: Any) -> list[Any] | None:
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_leader else None
        dist.gather_object(obj, out, dst=0)
        return out

    def ready(self, models: dict[str, Any]) -> None:
        """Every rank, once its models are loaded: exchange devices and weights hashes, so that
        rank 0 can record the devices and no rank evaluates other weights than rank 0's."""
        import torch.distributed as dist

        mine = {"device": device_name(self.device), "weights": {r: str(m.weights_sha256) for r, m in models.items()}}
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        self.devices = [e["device"] for e in everyone]
        for r, e in enumerate(everyone):
            if e["weights"] != everyone[0]["weights"]:
                raise UserError(f"rank {r} loaded other weights than rank 0 ({e['weights']} vs "
                                f"{everyone[0]['weights']}): every rank must see the same checkpoints")
        self._serving = True

    def close(self) -> None:
        """Rank 0: tell the waiting workers the run is over. Every rank: leave the group."""
        import torch.distributed as dist

        if self.is_leader and self._serving:
            self._serving = False
            self._broadcast({"op": "stop"})
        if dist.is_initialized():
            try:  # nobody leaves before every rank has received all that was sent to it: a gloo rank
                # whose peer tears the group down mid-message aborts ("terminate called ...", SIGABRT)
                dist.barrier()
            except RuntimeError:
                pass  # a peer is already gone (its own error is the one torchrun reports)
            dist.destroy_process_group()

    # -- generation -------------------------------------------------------------------------

    def generate(self, model: Any, role: str, todo: list, gen_config: Any, gen_fn: Any, cache: Any,
                 bar: Any = None) -> list:
        """Rank 0, from `RunContext.generate`: the generations of `todo` (cache misses), in order,
        made by every rank on its shard (steps 1-3 of the module docstring)."""
        task = {"op": "generate", "role": role, "gen_config": gen_config.to_dict(),
                "todo": [dataclasses.asdict(t) for t in todo]}
        self._broadcast(task)
        reply, own_error = self._run_shard(model, task, gen_fn, cache, bar)
        replies = self._gather(reply) or []
        if own_error is not None:  # after the gather, so that no worker is left inside it
            raise own_error
        for r, rep in enumerate(replies):
            if rep["error"] is not None:
                cls = UserError if rep["user_error"] else RuntimeError
                raise cls(f"rank {r}: {rep['error']}")
        out: list[Any] = [None] * len(todo)
        for r, rep in enumerate(replies):
            self.generated_per_rank[r] += len(rep["gens"])
            for i, g in rep["gens"]:
                out[i] = g if isinstance(g, Generation) else Generation(**g)
            if r and bar is not None:
                bar.advance(len(rep["gens"]))
        missing = [i for i, g in enumerate(out) if g is None]
        if missing:
            raise RuntimeError(f"no rank generated {len(missing)} of {len(todo)} requests (sharding bug)")
        return out

    def serve(self, models: dict[str, Any], cache: Any, gen_fn: Any = None) -> None:
        """Ranks > 0: generate rank-0's requests for this rank's shard until rank 0 says stop."""
        while True:
            task = self._broadcast(None)
            if task["op"] == "stop":
                return
            reply, _ = self._run_shard(models[task["role"]], task, gen_fn, cache, None)
            self._gather(reply)

    def _run_shard(self, model: Any, task: dict, gen_fn: Any, cache: Any, bar: Any) -> tuple[dict, Exception | None]:
        todo = [MissingGeneration(**t) for t in task["todo"]]
        mine = [i for i, t in enumerate(todo) if shard_of(t.sample_id, self.world_size) == self.rank]
        try:
            gens = generate_batches(model, [todo[i] for i in mine], GenerationConfig.from_dict(task["gen_config"]),
                                    gen_fn or engine.generate, cache, bar)
        except Exception as e:  # reported to rank 0, which raises it
            return {"gens": [], "error": f"{type(e).__name__}: {e}", "user_error": isinstance(e, UserError)}, e
        payload = gens if self.is_leader else [dataclasses.asdict(g) for g in gens]
        return {"gens": list(zip(mine, payload)), "error": None, "user_error": False}, None

    def provenance(self) -> dict[str, Any]:
        """The "distributed" block of the provenance (world_size and devices are top-level keys)."""
        return {"backend": BACKEND, "sharding": SHARDING, "generated_per_rank": list(self.generated_per_rank)}
