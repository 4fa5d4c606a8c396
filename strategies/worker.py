"""Generator training in a separate single-threaded process, overlapping with the classifier.

In experience t the generator learns from the experience's data and replay of its own copy frozen
at the end of t-1; the classifier learns from the same data and replay of that same frozen copy.
Neither needs the other's result of experience t, so on a CPU the two loops can run side by side
in two single-threaded processes (one per core) instead of one after the other. The outcome is the
same procedure as training them in sequence; only the wall time changes (about max instead of
sum). The worker is started with ``spawn`` (fork after OpenMP/MKL initialisation is unsafe) and
imports only ``generator_core`` and the model registry, not Avalanche.

While the main process waits for the worker's result, the worker may use the main process's core
too: the main process grants it more threads (``grant_threads``; ``GeneratorReplay(pooled_threads=...)``),
and the worker picks up the grant between two iterations. The operations of the generators'
training give the same bits on any number of threads in the tests' checks, but in a full split-MNIST
run the generator's losses agree only to six or seven digits between two takeover points, and the
classifier amplifies that: a seed's accuracy can move by a few tenths of a point with the machine's
load (docs/continual.md, "Wall time"). (The classifier is not pooled the other way: the weight gradient of its
10-unit output layer, a product summed over the batch, is split over threads differently.)

Messages are bytes produced by ``torch.save`` (robust, no shared-memory file descriptors). After
every job the worker reports its optimizer state, iteration count and RNG state, so a run can save
them and a resumed run can ``restore`` a fresh worker to exactly that point. A worker whose parent
process died (e.g. killed with SIGKILL) exits on its own.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import queue
import traceback

import torch

__all__ = ["GeneratorWorker"]


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(blob: bytes):
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


class _ListWriter:
    """Collects ``add_scalar`` calls; the main process replays them into TensorBoard."""

    def __init__(self) -> None:
        self.records: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value, step: int) -> None:
        self.records.append((tag, float(value), int(step)))

    def drain(self) -> list[tuple[str, float, int]]:
        records, self.records = self.records, []
        return records


class _SharedProgress:
    """``progress.update(n)``, called once per generator iteration: counts into a shared counter the
    main process reads, and takes up the number of threads the main process grants."""

    def __init__(self, counter, threads) -> None:
        self.counter = counter
        self.threads = threads
        self.iterations = 0  # of the current job
        self.thread_changes: list[tuple[int, int]] = []  # (iterations done, threads from then on) in the job
        self.follow_grant()

    def start_job(self) -> None:
        self.iterations = 0
        self.follow_grant()
        self.thread_changes = [(0, torch.get_num_threads())]

    def follow_grant(self) -> None:
        granted = int(self.threads.value)
        if granted != torch.get_num_threads():
            torch.set_num_threads(granted)
            self.thread_changes.append((self.iterations, granted))

    def update(self, n: int = 1) -> None:
        self.counter.value += n
        self.iterations += n
        self.follow_grant()


def _next_request(requests):
    """The next request, or None once the parent process is gone (then nothing will read replies)."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            return requests.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


def _worker_main(requests, replies, counter, threads) -> None:
    try:
        torch.set_flush_denormal(True)
        from cl_replay.divergence import DivergenceError
        from cl_replay.models import build_model

        from .generator_core import GeneratorCore, GeneratorState, make_adam, train_generator

        init = _loads(requests.get())  # the first request: the generator and its optimizer's settings
        torch.manual_seed(init["seed"])
        generator = GeneratorCore(build_model(init["model_config"]), init["name"])
        generator.load_state_dict(init["state_dict"])
        state = GeneratorState(make_adam(generator.parameters(), lr=init["lr"], betas=init["betas"]))
        writer = _ListWriter()
        progress = _SharedProgress(counter, threads)
        replies.put(_dumps({"status": "ready", "pid": os.getpid()}))
    except BaseException:  # report start-up failures instead of dying silently
        replies.put(_dumps({"status": "error", "error": traceback.format_exc()}))
        return
    while True:
        blob = _next_request(requests)
        if blob is None:
            replies.cancel_join_thread()  # nobody reads replies any more: exit without flushing them
            os._exit(0)  # every result was read: skip the interpreter's teardown (a second or two)
        try:
            job = _loads(blob)
            if "restore" in job:
                restore = job["restore"]
                generator.load_state_dict(restore["state_dict"])
                state.optimizer.load_state_dict(restore["optimizer"])
                state.iteration = restore["iteration"]
                torch.set_rng_state(restore["rng"])
                continue
            t = job["experience"]
            progress.start_job()
            previous = generator.frozen_copy() if t > 1 else None
            stats = train_generator(generator, previous, job["x"], t, state, job["schedule"], progress=progress,
                                    writer=writer, data_y=job["y"])
            stats["worker_threads"] = [list(change) for change in progress.thread_changes]
            state_dict = {k: v.detach().clone() for k, v in generator.state_dict().items()}
            training = {"optimizer": state.optimizer.state_dict(), "iteration": state.iteration,
                        "rng": torch.get_rng_state()}
            replies.put(_dumps({"status": "ok", "state_dict": state_dict, "stats": stats, "logs": writer.drain(),
                                "training": training}))
        except DivergenceError as error:
            replies.put(_dumps({"status": "diverged", "error": str(error)}))
        except BaseException:
            replies.put(_dumps({"status": "error", "error": traceback.format_exc()}))


class GeneratorWorker:
    """A persistent process that owns a copy of the generator and its optimizer.

    ``submit(x, t)`` starts training on experience t; ``result()`` waits for it and returns
    (state_dict, stats, TensorBoard records, training state). ``progress_count()`` is the number of generator
    iterations done so far (for the progress bar). The worker runs on ``threads`` torch threads
    until ``grant_threads`` says otherwise.
    """

    def __init__(self, generator, model_config, lr: float, betas: tuple[float, float], seed: int,
                 threads: int = 1) -> None:
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self._requests = context.Queue()
        self._replies = context.Queue()
        self._counter = context.RawValue("q", 0)
        self._threads = context.RawValue("i", max(1, threads))
        init = {
            "model_config": model_config,
            "name": generator.name,
            "state_dict": {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()},
            "lr": lr,
            "betas": betas,
            "seed": seed,
        }
        self.process = context.Process(
            target=_worker_main, args=(self._requests, self._replies, self._counter, self._threads), daemon=True,
            name="cl-replay-generator",
        )
        # Through the queue, not the process's arguments: start() then returns at once instead of
        # waiting for the new interpreter to import torch and read megabytes of weights from a pipe.
        self._requests.put(_dumps(init))
        self.process.start()
        self._ready = False

    def _receive(self) -> dict:
        while True:
            try:
                message = _loads(self._replies.get(timeout=5.0))
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(f"the generator worker process died (exit code {self.process.exitcode})")
                continue
            if message["status"] == "error":
                raise RuntimeError("generator worker failed:\n" + message["error"])
            if message["status"] == "diverged":
                from cl_replay.divergence import DivergenceError

                raise DivergenceError(message["error"])
            return message

    def _send(self, job: dict) -> None:
        if not self._ready:
            self._receive()  # the "ready" message
            self._ready = True
        self._requests.put(_dumps(job))

    def submit(self, x: torch.Tensor, experience: int, schedule, y: torch.Tensor | None = None) -> None:
        """Train the generator for ``experience`` on ``x`` (labels ``y``: for categories tied to classes)."""
        self._send({"x": x.detach().cpu(), "y": None if y is None else y.detach().cpu(), "experience": experience,
                    "schedule": schedule})

    def restore(self, generator, optimizer: dict, iteration: int, rng: torch.Tensor) -> None:
        """Bring the worker to a saved point: ``generator``'s weights, the optimizer state, the
        iteration count and the RNG state its last job ended with."""
        state_dict = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
        self._send({"restore": {"state_dict": state_dict, "optimizer": optimizer, "iteration": iteration, "rng": rng}})

    def result(self) -> tuple[dict, dict, list, dict]:
        """(state_dict, stats, TensorBoard records, training state: optimizer, iteration, rng)."""
        message = self._receive()
        return message["state_dict"], message["stats"], message["logs"], message["training"]

    def grant_threads(self, threads: int) -> None:
        """Let the worker use ``threads`` torch threads from its next iteration (or job) on."""
        self._threads.value = max(1, int(threads))

    def progress_count(self) -> int:
        return int(self._counter.value)

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._requests.put(None)
                self.process.join(timeout=10)
            finally:
                if self.process.is_alive():
                    self.process.terminate()
                    self.process.join(timeout=5)
