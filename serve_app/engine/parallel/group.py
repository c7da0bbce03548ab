"""Per-engine tensor-parallel process groups: rendezvous and the collectives the layers use.

Each TP engine owns its own group, built directly on a gloo (CPU) or NCCL (CUDA) backend
over its own TCPStore. torch.distributed's default process group is never touched, so two
TP engines (or a TP engine and anything else using torch.distributed) can live in one
process, and the store's port is picked by the OS per engine: nothing is hard-coded, so
engines on one machine never collide.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Covers the slowest rank's first forward (CUDA graph / Triton compiles) so a healthy but slow
# rank is not mistaken for a hung one. A rank that dies is detected at once by its peers
# (its sockets close), whatever this timeout says.
COLLECTIVE_TIMEOUT_S = 300.0
# How long the driver's store waits for every rank to arrive.
RENDEZVOUS_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where the ranks of one engine meet: picklable, handed to every worker."""

    host: str
    port: int
    prefix: str  # unique per engine: keys of two groups can never mix
    world_size: int
    backend: str  # "gloo" or "nccl"


def backend_for_device(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def open_rendezvous(world_size: int, backend: str, host: str = "127.0.0.1") -> tuple:
    """Start the store on a port the OS picks; returns (store, Rendezvous). Rank 0 keeps the
    store alive for the group's lifetime."""
    store = dist.TCPStore(
        host,
        0,
        world_size,
        is_master=True,
        timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT_S),
        wait_for_workers=False,
    )
    rendezvous = Rendezvous(host, store.port, f"tp-{uuid.uuid4().hex}", world_size, backend)
    return store, rendezvous


class TensorParallelGroup:
    """The collectives of one engine's ranks, on a backend created for this engine only."""

    def __init__(
        self,
        rendezvous: Rendezvous,
        rank: int,
        store: dist.Store | None = None,
        local_address: str = "127.0.0.1",
    ) -> None:
        self.rank = rank
        self.rendezvous = rendezvous
        self.world_size = rendezvous.world_size
        self.backend_name = rendezvous.backend
        if store is None:  # a non-zero rank connects to rank 0's store
            store = dist.TCPStore(
                rendezvous.host,
                rendezvous.port,
                rendezvous.world_size,
                is_master=False,
                timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT_S),
            )
        self._store = dist.PrefixStore(rendezvous.prefix, store)
        timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        if rendezvous.backend == "gloo":
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_address)]
            self._backend = dist.ProcessGroupGloo(self._store, rank, self.world_size, options)
        elif rendezvous.backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._backend = dist.ProcessGroupNCCL(self._store, rank, self.world_size, options)
        else:
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {rendezvous.backend!r}")
        self._closed = False

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (returned for chaining). The tensor must be contiguous,
        or a 2-D transposed view of a contiguous one (what the CPU `linear` returns): the
        sum is elementwise, so that one is reduced through its contiguous transpose."""
        dense = tensor if tensor.is_contiguous() else tensor.t()
        assert dense.is_contiguous(), "all_reduce needs a contiguous tensor or its transpose"
        self._backend.allreduce([dense]).wait()
        return tensor

    def gather_to_first_rank(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's tensor (same shape everywhere), in rank order, on rank 0; None elsewhere."""
        tensor = tensor.contiguous()
        options = dist.GatherOptions()
        options.rootRank = 0
        if self.rank == 0:
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            self._backend.gather([parts], [tensor], options).wait()
            return parts
        self._backend.gather([], [tensor], options).wait()
        return None

    def abort(self) -> None:
        """Unblock collectives waiting on a dead peer (NCCL; gloo notices closed sockets)."""
        if self.backend_name == "nccl" and not self._closed:
            self._backend.abort()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # a peer already gone: nothing left to close
            self._backend.shutdown()
        # Drop the last references: rank 0's store closes its listening port with them.
        self._backend = None
        self._store = None
