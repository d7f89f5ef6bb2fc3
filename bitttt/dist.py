"""Data parallelism over MPI: which rank this process is, the fixed-order sum of flat gradient
buffers, broadcasts, and the check that every rank holds the same parameters.

    mpiexec -n 2 python -m mpi4py -m bitttt.train ...       # bitttt.dist.world() finds the 2 ranks

`world()` returns a `World`: the single process (no MPI, nothing imported) unless the process
was started by `mpiexec` (or mpi4py is already imported) with more than one rank, then an
`MPIWorld` on MPI_COMM_WORLD.  Everything exchanged is a plain NumPy buffer on the host, so the
reduction does not depend on the backend that computed the gradients (a GPU backend runs one rank
per GPU and picks its device by `local_rank`, the rank among those on its machine).

The sum is order-identical to one process: rank r holds the gradients of micro-batches
r*a .. r*a+a-1 of the global step (a = grad_accum), and `ordered_sum` returns on every rank the
left fold ((g0 + g1) + g2) + ... in micro-batch order, the association a single process with
grad_accum = a * world_size uses.  It runs as a pipelined chain: rank 0 folds its parts and
sends the running sum chunk by chunk to rank 1, which adds its parts in order and passes it on;
the last rank broadcasts the total.  Ranks other than 0 keep their a parts until the running sum
arrives (a gradient-sized buffer per micro-batch).
"""
from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

# variables that MPI launchers (MPICH/Hydra, Intel MPI, Open MPI, PMIx, Slurm's PMI) set for their ranks
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")

CHUNK_BYTES = 4 << 20  # the running sum moves in pieces of this size, so rank r+1 starts adding early


class DistributedError(RuntimeError):
    """Ranks disagree (parameters diverged, a launch that MPI cannot serve).  `collective` is True
    when every rank raises it at the same point, so each can exit on its own without an abort."""

    collective = True


class World:
    """One process: rank 0 of 1.  The base of `MPIWorld`; every method is a collective there."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    def __init__(self) -> None:
        self.reduce_s = 0.0  # seconds spent in ordered_sum (with any wait for a rank that comes later)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints, logs and progress."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local={self.local_rank}/{self.local_size})"

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def allgather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects)."""
        return [obj]

    def bcast(self, obj, root: int = 0):
        """Rank `root`'s obj on every rank (small picklable objects)."""
        return obj

    def bcast_array(self, a: np.ndarray, root: int = 0) -> None:
        """Overwrite C-contiguous `a` on every rank with rank `root`'s values (same shape and dtype everywhere)."""

    def abort(self, code: int = 1) -> None:
        """End every rank at once with exit status `code` (one process: nothing to do, the caller exits)."""

    def ordered_sum(self, parts: list[np.ndarray]) -> np.ndarray:
        """The left fold of every rank's parts in (rank, part) order, on every rank.

        parts: this rank's flat C-contiguous buffers, all of one length and dtype on every rank (a rank
        may hold none; some rank must hold one).  Returns a new buffer of that length and dtype:
        ((p[0][0] + p[0][1]) + ...) + p[1][0] + ...
        """
        _check_parts(parts)
        t0 = time.perf_counter()
        out = parts[0].copy()
        for p in parts[1:]:
            out += p
        self.reduce_s += time.perf_counter() - t0
        return out

    def check_same(self, tensors: dict[str, np.ndarray], what: str = "parameters") -> None:
        """Raise DistributedError on every rank unless all ranks hold bit-identical `tensors`
        (same names, shapes, dtypes, bytes; compared by a CRC-32 per tensor)."""
        digests = self.allgather(tensor_digests(tensors))
        bad = [r for r in range(1, len(digests)) if digests[r] != digests[0]]
        if not bad:
            return
        r = bad[0]
        mine, theirs = ({n: d for n, *d in digests[q]} for q in (0, r))
        names = [n for n in dict.fromkeys([*mine, *theirs]) if mine.get(n) != theirs.get(n)]
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise DistributedError(f"the ranks hold different {what}: rank {r} differs from rank 0 in {names[0]}{more}"
                               f"; ranks that differ: {', '.join(map(str, bad))}. The run stopped before writing "
                               f"anything from this state; resume from the last checkpoint")


class MPIWorld(World):
    """The ranks of an MPI communicator (default MPI_COMM_WORLD), through mpi4py."""

    def __init__(self, comm=None) -> None:
        super().__init__()
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def barrier(self) -> None:
        self.comm.Barrier()

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def bcast_array(self, a: np.ndarray, root: int = 0) -> None:
        if not a.flags.c_contiguous:
            raise ValueError("bcast_array needs a C-contiguous array")
        self.comm.Bcast(a.reshape(-1).view(np.uint8), root=root)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def ordered_sum(self, parts: list[np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        if parts:
            _check_parts(parts)
        meta = self.comm.allgather((len(parts), parts[0].size, parts[0].dtype.str) if parts else (0, None, None))
        chain = [r for r, (k, _, _) in enumerate(meta) if k]  # the ranks that hold parts, in order
        if not chain:
            raise ValueError("ordered_sum needs at least one buffer on some rank")
        if len({(n, dt) for k, n, dt in meta if k}) != 1:
            raise DistributedError(f"ranks hold gradient buffers of different sizes or dtypes: {meta}")
        n, dtype = meta[chain[0]][1], np.dtype(meta[chain[0]][2])
        out = np.empty(n, dtype)
        if parts:
            pos = chain.index(self.rank)
            prev = chain[pos - 1] if pos > 0 else None
            nxt = chain[pos + 1] if pos + 1 < len(chain) else None
            step = max(1, CHUNK_BYTES // dtype.itemsize)
            sends = []
            for s in range(0, n, step):
                e = min(n, s + step)
                piece = out[s:e]
                if prev is None:
                    np.copyto(piece, parts[0][s:e])
                    rest = parts[1:]
                else:
                    self.comm.Recv(piece, source=prev, tag=71)
                    rest = parts
                for p in rest:
                    piece += p[s:e]
                if nxt is not None:
                    sends.append(self.comm.Isend(piece, dest=nxt, tag=71))
            self.MPI.Request.Waitall(sends)
        self.comm.Bcast(out, root=chain[-1])
        self.reduce_s += time.perf_counter() - t0
        return out


def _check_parts(parts: list[np.ndarray]) -> None:
    if not parts:
        raise ValueError("ordered_sum needs at least one buffer on every rank")
    n, dt = parts[0].size, parts[0].dtype
    for p in parts:
        if p.ndim != 1 or not p.flags.c_contiguous or p.size != n or p.dtype != dt:
            raise ValueError(f"ordered_sum takes flat C-contiguous buffers of one size and dtype; got "
                             f"{[(q.shape, q.dtype.str) for q in parts]}")


def tensor_digests(tensors: dict[str, np.ndarray]) -> list[tuple[str, str, int]]:
    """[(name, 'shape/dtype', CRC-32 of the bytes)] in the dict's order."""
    out = []
    for name, t in tensors.items():
        a = np.ascontiguousarray(t)
        out.append((name, f"{a.shape}/{a.dtype.str}", zlib.crc32(a.reshape(-1).view(np.uint8))))
    return out


def launched_size() -> int:
    """The world size an MPI launcher announced in the environment (1 when none did)."""
    for var in _SIZE_VARS:
        v = os.environ.get(var, "")
        if v.isdigit():
            return int(v)
    return 1


_WORLD: World | None = None


def world() -> World:
    """The processes of this run (cached): `MPIWorld` when more than one rank was launched, else `World`.

    A launch of several ranks without mpi4py installed is refused with the command that installs it
    (running N independent copies of one training run would only waste the machines)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    n = launched_size()
    if n > 1 or "mpi4py" in sys.modules:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise DistributedError(f"this process is one of {n} MPI ranks, but mpi4py is not installed: "
                                   "pip install 'bitttt[mpi]' (mpi4py and the mpich wheel)") from None
        w = MPIWorld()
        _WORLD = w if w.size > 1 else World()
    else:
        _WORLD = World()
    return _WORLD


class FlatLayout:
    """Names, shapes and offsets of a dict of tensors laid end to end in one flat buffer (dict order)."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.names = list(tensors)
        self.shapes = [tuple(np.shape(t)) for t in tensors.values()]
        self.dtype = np.result_type(*[np.asarray(t).dtype for t in tensors.values()]) if tensors else np.float32
        self.offsets = [0]
        for shp in self.shapes:
            self.offsets.append(self.offsets[-1] + int(np.prod(shp, dtype=np.int64)))
        self.size = self.offsets[-1]

    def pack(self, tensors: dict[str, np.ndarray], out: np.ndarray | None = None, add: bool = False) -> np.ndarray:
        """Copy (or with add=True: add, tensor by tensor, out[slice] += t) `tensors` into flat `out`
        [size] (a new buffer when None); returns it."""
        if out is None:
            out = np.empty(self.size, self.dtype)
        for name, shp, s, e in zip(self.names, self.shapes, self.offsets, self.offsets[1:]):
            t = np.asarray(tensors[name])
            if t.shape != shp:
                raise ValueError(f"{name} has shape {t.shape}, the layout has {shp}")
            if add:
                out[s:e] += t.reshape(-1)
            else:
                out[s:e] = t.reshape(-1)
        return out

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """{name: view of flat[slice] shaped like the tensor} (writing to a view writes to `flat`)."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat buffer has shape {flat.shape}, the layout needs ({self.size},)")
        return {n: flat[s:e].reshape(shp) for n, shp, s, e in zip(self.names, self.shapes, self.offsets,
                                                                   self.offsets[1:])}
