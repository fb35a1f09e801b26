"""The ``metamorphosis`` command line (CONTRACT: CLI in DESIGN.md).

Every user error (config, data, run dir, a flag) ends in one line on stderr and
exit code 2; ``--debug`` shows the traceback instead. Commands just raise
:class:`MetaMorphosisError`: :class:`_OneLineErrors` turns it into that line.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from typer.core import TyperGroup

from .errors import MetaMorphosisError

INTERRUPTED = 130  # typer turns Ctrl-C into this exit code
# The parser's exceptions: typer >= 0.29 vendors click as typer._click, older ones use click.
_click: Any = getattr(typer.core, "_click", None) or getattr(typer.core, "click")  # noqa: B009
_NoArgsIsHelp = getattr(_click.exceptions, "NoArgsIsHelpError", type("_Never", (Exception,), {}))
# typer's vendored click keeps Abort in typer.exceptions; click proper in click.exceptions
_Abort = getattr(_click.exceptions, "Abort", None) or typer.Abort


class _OneLineErrors(TyperGroup):
    """Every bad input as one ``error: …`` line and exit code 2, in this one place.

    Our own errors (any :class:`MetaMorphosisError` a command raises: config, data,
    run dir, flags) and the parser's (``--port abc``, an unknown flag), for which
    click would print a usage box of several lines. ``--debug`` shows the traceback.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except MetaMorphosisError as exc:
            sys.exit(_user_error(exc))
        except _NoArgsIsHelp as exc:  # bare `metamorphosis`: the help
            exc.show()
            sys.exit(exc.exit_code)
        except _click.exceptions.ClickException as exc:
            sys.exit(_usage_error(exc))
        except _Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        if code == INTERRUPTED:
            typer.echo("interrupted: the last checkpoint is kept; rerun to resume", err=True)
        sys.exit(code if isinstance(code, int) else 0)


def _user_error(exc: MetaMorphosisError) -> int:
    if _state["debug"]:
        traceback.print_exception(exc)
    else:
        typer.echo(f"error: {exc}", err=True)
    return 2


def _usage_error(exc: Any) -> int:
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = " (see --help)" if isinstance(exc, _click.exceptions.UsageError) else ""
    message = " ".join(exc.format_message().split())
    typer.echo(f"error: {where}{message}{hint}", err=True)
    return 2


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Privacy-cognizant, task-specific features (MetaMorphosis, IoTDI 2023).",
)
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def _check_out(out: Path) -> None:
    """``--out`` must be a folder, or a path one can be made at, and not a finished run.

    Checked before training, so a bad path costs a second, not a run that then
    fails to write (and nothing is created on disk yet).
    """
    if out.exists() and not out.is_dir():
        raise MetaMorphosisError(f"--out {out} is a file: expected a folder for the run dir")
    parent = out
    while not parent.exists():  # the first existing ancestor decides
        parent = parent.parent
    if not parent.is_dir():
        raise MetaMorphosisError(f"--out {out} lies under {parent}, which is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MetaMorphosisError(f"--out {out}: {parent} is not writable")
    if (out / "run.json").exists():
        raise MetaMorphosisError(
            f"{out} already holds a finished run (run.json); choose another --out"
        )


def _cell(value: Any, width: int) -> str:
    """A metric for the summary; null (not finite / not measured) or missing shows as '—'."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:>{width}.3f}" if number else f"{'—':>{width}}"


def summary_table(record: dict[str, Any]) -> str:
    """A short plain-text summary of a run: utility, ε and swap leakage."""
    from .config import config_from_dict
    from .metrics import primary_metric

    config = config_from_dict(record["config"])
    lines = []
    privacy = record["privacy"]
    eps = privacy["epsilon"]
    eps_text = "none (no DP)" if eps is None else f"{eps:.3g} (delta={privacy['delta']:g})"
    lines.append(f"method: {config.method}   privacy mode: {privacy['mode']}   epsilon: {eps_text}")
    lines.append(f"{'label':<16}{'role':<10}{'metric':<16}{'test':>8}")
    for spec in config.all_labels:
        role = "public" if spec.name in record["tasks"] else "private"
        metric, _ = primary_metric(spec.kind)
        value = (record["metrics"].get(spec.name) or {}).get(metric)
        lines.append(f"{spec.name:<16}{role:<10}{metric:<16}{_cell(value, 8)}")
    swap = record.get("swap_matrix") or {}
    if swap:
        names = [s.name for s in config.all_labels]
        lines.append("swap matrix (row: module's features, column: head's label, primary metric):")
        lines.append(" " * 16 + "".join(f"{n[:11]:>12}" for n in names))
        for row in names:
            cells = [_cell((swap.get(row) or {}).get(col), 12) for col in names]
            lines.append(f"{row:<16}" + "".join(cells))
    return "\n".join(lines)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run dir to write.")] = Path("runs/demo"),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key of the demo config (repeatable)."),
    ] = None,
    audit: Annotated[
        bool, typer.Option(help="Audit the trained run (quick attack budget) into OUT/audit.")
    ] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train the embedded demo (generated scenes, recommended defence), audit it, summarise."""
    from .audit.run import AUDIT_DIR, run_audit
    from .experiment import demo_config, train_run

    _check_out(out)
    config = demo_config(set_ or [])
    budget = f", target epsilon {config.privacy.target_epsilon}" if config.privacy.uses_dp else ""
    typer.echo(
        f"demo: {len(config.tasks)} public tasks, {len(config.private_attributes)} "
        f"private attribute(s), mode {config.privacy.mode}{budget}"
    )
    record = train_run(config, out, progress=not quiet)
    typer.echo(summary_table(record))
    if audit:
        report = run_audit(
            out,
            budget="quick",
            device=config.train.device,
            seed=config.train.seed,
            progress=not quiet,
            log=lambda line: typer.echo(line, err=True) if not quiet else None,
        )
        typer.echo("audit findings (quick attack budget):")
        typer.echo(audit_summary(report))
        typer.echo(f"report: {out / AUDIT_DIR / 'report.md'} (and report.html)")
    typer.echo(f"run dir: {out}")


# Options that train and pack share (typer reads them from the annotations).
ConfigArgument = Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML config.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: section.key=value (repeatable)."),
]
DataRootOption = Annotated[Path | None, typer.Option(help="Dataset folder, overriding data.root.")]
QuietOption = Annotated[bool, typer.Option(help="No progress bars.")]


@app.command()
def train(
    config_path: ConfigArgument,
    out: Annotated[Path, typer.Option(help="Run dir to write (resumes its checkpoint).")],
    set_: SetOption = None,
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
    remote: Annotated[
        bool, typer.Option(help="Public tasks' consumers train over HTTP (`consume --train`).")
    ] = False,
    host: Annotated[str, typer.Option(help="With --remote: address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="With --remote: port of the training API.")] = 8100,
    step_timeout: Annotated[
        float, typer.Option(help="With --remote: seconds to wait for a gradient per try.")
    ] = 60.0,
    ssl_certfile: Annotated[
        str | None, typer.Option(help="With --remote: TLS certificate (PEM).")
    ] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="With --remote: TLS key (PEM).")] = None,
    insecure: Annotated[
        bool, typer.Option(help="With --remote: allow plaintext on a non-loopback address.")
    ] = False,
) -> None:
    """Train a producer and its consumer heads from a config into a run dir."""
    from .config import load_config
    from .experiment import train_run

    config = load_config(config_path, set_ or [])
    _check_out(out)
    if remote:
        listen = _Listen(host, port, step_timeout, ssl_certfile, ssl_keyfile, insecure)
        record = _train_remote(config, out, data_root, not quiet, listen)
    else:
        record = train_run(config, out, data_root=data_root, progress=not quiet)
    if not record:  # a rank other than 0 under torchrun: rank 0 reports
        return
    typer.echo(summary_table(record))
    typer.echo(f"run dir: {out}")


@app.command("add-task")
def add_task(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run dir.")],
    task: Annotated[str, typer.Option(help="Name of the new public task.")],
    column: Annotated[
        str | None, typer.Option(help="The dataset's label column (default: the task name).")
    ] = None,
    kind: Annotated[str, typer.Option(help="binary, multiclass or a dense kind.")] = "binary",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs for the new module (default: the run's).")
    ] = None,
    omega: Annotated[
        float | None,
        typer.Option(help="SSIM weight against the other modules (default: the run's)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the extended run here instead of into RUN_DIR.")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Dataset folder, overriding data.root.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Add a task to a finished run: train only its module and head (encoder frozen)."""
    from .config import LabelSpec
    from .experiment import add_task as add_task_to_run

    try:
        spec = LabelSpec(name=task, column=column or task, kind=kind)
    except MetaMorphosisError as exc:  # LabelSpec names its fields, not the flags
        raise MetaMorphosisError(f"--task {task!r} --kind {kind!r}: {exc}") from None
    if out is not None and out.resolve() != run_dir.resolve():
        _check_out(out)
    record = add_task_to_run(
        run_dir,
        spec,
        epochs=epochs,
        omega=omega,
        out=out,
        data_root=data_root,
        progress=not quiet,
    )
    added = record["added_tasks"][-1]
    typer.echo(summary_table(record))
    eps = (
        ""
        if added["epsilon_after"] is None
        else (f"; epsilon {added['epsilon_before']:.3g} -> {added['epsilon_after']:.3g}")
    )
    typer.echo(f"added {task} in {added['seconds']:.1f} s{eps}; run dir: {out or run_dir}")


@dataclass(frozen=True)
class _Listen:
    """Where and how ``train --remote`` serves its training routes (checked on creation)."""

    host: str
    port: int
    step_timeout: float
    ssl_certfile: str | None
    ssl_keyfile: str | None
    insecure: bool

    def __post_init__(self) -> None:
        from .serve.listen import check_port, check_seconds

        check_port(self.port, "--port", any_port=True)
        # A day at most: longer is a typo, and threading's waits overflow past ~292 years.
        check_seconds(self.step_timeout, "--step-timeout", maximum=86400.0)


def _train_remote(config, out: Path, data_root, progress: bool, listen: _Listen):
    """Serve the training routes while training; print a key per task that has none.

    Everything that can be refused (method, TLS files, address, port, the key store)
    is checked before any key is issued.
    """
    _require_serve_extra()
    from .experiment import train_run
    from .serve.keys import KeyStore
    from .serve.listen import check_tls
    from .serve.server import KEYS_FILE, check_bind
    from .serve.training import TrainingServer
    from .train.distributed import distributed_world_size
    from .train.methods import resolve_method
    from .train.remote import TrainingHub, check_remote_method

    if distributed_world_size() > 1:
        raise MetaMorphosisError("--remote trains in one process: start it without torchrun")
    check_remote_method(resolve_method(config))
    check_tls(listen.ssl_certfile, listen.ssl_keyfile)
    check_bind(listen.host, tls=listen.ssl_certfile is not None, insecure=listen.insecure)
    keys = KeyStore(out / KEYS_FILE)
    if keys.migrated:
        typer.echo(keys.migrated, err=True)
    tasks = [spec.name for spec in config.tasks]
    hub = TrainingHub(tasks, timeout=listen.step_timeout)
    server = TrainingServer(
        hub,
        keys,
        host=listen.host,
        port=listen.port,
        ssl_certfile=listen.ssl_certfile,
        ssl_keyfile=listen.ssl_keyfile,
    )
    with server:
        _issue_missing_keys(keys, tasks, out)
        typer.echo(f"training API on {server.url}: waiting for consumers of {tasks}", err=True)
        return train_run(config, out, data_root=data_root, progress=progress, remote=hub)


def _issue_missing_keys(keys, tasks: list[str], out: Path) -> None:
    """A key for every task without an active one; each secret is shown once."""
    import time as _time

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MetaMorphosisError(f"--out {out} cannot be created: {exc.strerror}") from exc
    now = _time.time()
    covered = {r.task for r in keys.list() if r.status(now) == "active"}
    for task in tasks:
        if task not in covered:
            typer.echo(f"key for {task} (shown once): {keys.issue(task).secret}", err=True)


def _parse_sweep_values(raw: list[str]) -> dict[str, list[float]]:
    """``epsilon=0.5,1,inf`` -> ``{"epsilon": [0.5, 1.0, inf]}``."""
    values: dict[str, list[float]] = {}
    for item in raw:
        name, sep, text = item.partition("=")
        try:
            if not sep:
                raise ValueError
            values[name.strip()] = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise MetaMorphosisError(
                f"--values {item!r} is invalid: expected NAME=V1,V2,... (e.g. epsilon=1,4,inf)"
            ) from None
    return values


def audit_summary(report: dict[str, Any]) -> str:
    """The findings of an audit, one per line, warnings first."""
    lines = [f"{f['level']:>8}: {f['text'].replace('`', '')}" for f in report["findings"]]
    return "\n".join(lines)


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run dir.")],
    data_root: Annotated[
        Path | None, typer.Option(help="Dataset folder, overriding the run's data.root.")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Small attack budget (tests, smoke checks); not for reporting.")
    ] = False,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            help="Also retrain across a preset, 'epsilon' or 'split', or KEY=V1,V2,... over "
            "any config key as --set sets it (e.g. privacy.omega=0.0001,0.001,0.01); "
            "repeatable; slow: one training per value."
        ),
    ] = None,
    values: Annotated[
        list[str] | None,
        typer.Option(help="Preset values, e.g. epsilon=0.5,1,2,4,8,inf or split=5,7,8."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda: where attackers train.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of subsets, attackers and t-SNE.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Attack a trained producer and write RUN_DIR/audit/ (report.md, .json, .html, PNGs)."""
    from .audit.run import AUDIT_DIR, run_audit

    report = run_audit(
        run_dir,
        data_root=data_root,
        budget="quick" if quick else "full",
        device=device,
        seed=seed,
        sweeps=sweep or [],
        sweep_values=_parse_sweep_values(values or []),
        progress=not quiet,
        log=lambda line: typer.echo(line, err=True) if not quiet else None,
    )
    typer.echo(audit_summary(report))
    typer.echo(f"report: {run_dir / AUDIT_DIR / 'report.md'} (and report.html, report.json)")


def _require_serve_extra() -> None:
    """The service's packages come with the ``serve`` extra; say so instead of a traceback."""
    import importlib.util

    missing = [
        name
        for name in ("fastapi", "uvicorn", "httpx", "prometheus_client", "zstandard")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise MetaMorphosisError(
            f"the service needs {', '.join(missing)}: pip install -e '.[serve]'"
        )


@app.command()
def pack(
    config_path: ConfigArgument,
    out: Annotated[Path, typer.Option(help="Folder to write (must not exist).")],
    set_: SetOption = None,
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
) -> None:
    """Decode and resize a config's dataset once into memory-mapped arrays
    (then `data: {name: packed, root: OUT}` reads it)."""
    from .config import load_config
    from .data.packed import pack_dataset

    config = load_config(config_path, set_ or [])
    folder = pack_dataset(
        config.data,
        config.all_labels,
        out,
        seed=config.train.seed,
        root=data_root,
        progress=not quiet,
    )
    typer.echo(f"packed {config.data.name} into {folder}")
    typer.echo(f"read it with: --set data.name=packed --set data.root={folder}")


def _tell(message: str) -> None:
    """A one-line notice on stderr (stdout stays for what scripts read)."""
    typer.echo(message, err=True)


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run dir.")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API (0: any free port).")] = 8000,
    source: Annotated[
        str, typer.Option(help="The inputs: train, val or test (the run's split) or a folder.")
    ] = "test",
    data_root: Annotated[
        Path | None, typer.Option(help="Dataset folder, overriding the run's data.root.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    insecure: Annotated[
        bool, typer.Option(help="Allow plaintext HTTP on a non-loopback address.")
    ] = False,
    max_concurrency: Annotated[
        int,
        typer.Option(
            help="Requests and open streams in flight per worker; more get 503 (streams: 1013)."
        ),
    ] = 8,
    max_ids: Annotated[int, typer.Option(help="Most items per feature request.")] = 256,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body; larger ones get 413.")
    ] = 64 * 2**20,
    workers: Annotated[
        int, typer.Option(help="Worker processes behind the one port (each loads the producer).")
    ] = 1,
) -> None:
    """Publish each task's features of the producer's inputs to that task's key holders."""
    _require_serve_extra()
    from .serve.server import build_service, check_limits, check_listen
    from .serve.workers import check_workers

    check_limits(max_concurrency=max_concurrency, max_ids=max_ids, max_body_bytes=max_body_bytes)
    check_workers(workers)
    if data_root is not None and not data_root.is_dir():
        raise MetaMorphosisError(f"--data-root {data_root} is not a folder")
    tls = {"ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    check_listen(host, port, **tls, insecure=insecure, metrics_port=metrics_port)
    # Built here even for several workers: a bad run dir, source or key store is one
    # error before anything starts, and a keys.json is migrated once, not by N workers.
    service = build_service(
        run_dir, source=source, data_root=data_root, max_ids=max_ids, notify=_tell
    )
    limits = {"max_body_bytes": max_body_bytes, "max_concurrency": max_concurrency}
    if workers == 1:
        _serve_one(service, host, port, metrics_port, tls, limits)
        return
    from .serve.server import SPLITS
    from .serve.workers import WorkerSettings

    tasks = list(service.tasks)
    del service  # each worker builds its own
    settings = WorkerSettings(
        run_dir=str(run_dir.resolve()),
        source=source if source in SPLITS else str(Path(source).resolve()),
        data_root=None if data_root is None else str(data_root.resolve()),
        max_ids=max_ids,
        **limits,
    )
    _serve_workers(settings, workers, tasks, host, port, metrics_port, tls)


def _serve_one(service, host: str, port: int, metrics_port, tls: dict, limits: dict) -> None:
    from .serve.app import create_app
    from .serve.listen import url_of
    from .serve.server import open_listener, serve_forever

    app_ = create_app(service, **limits)
    # Bound before announcing: a port in use is an error here, not after "serving".
    registry = app_.state.metrics.registry
    sock = open_listener(host, port, metrics_port=metrics_port, metrics_registry=registry)
    url = url_of(sock, host, tls=tls["ssl_certfile"] is not None)
    typer.echo(f"serving {', '.join(service.tasks)} on {url}", err=True)
    serve_forever(app_, sock, **tls)


def _serve_workers(
    settings, workers: int, tasks: list[str], host: str, port: int, metrics_port, tls: dict
) -> None:
    from .serve.listen import url_of
    from .serve.server import open_listener
    from .serve.workers import metrics_folder, multiprocess_registry, serve_workers

    with metrics_folder() as folder:
        registry = multiprocess_registry(folder)
        sock = open_listener(host, port, metrics_port=metrics_port, metrics_registry=registry)
        url = url_of(sock, host, tls=tls["ssl_certfile"] is not None)
        typer.echo(f"serving {', '.join(tasks)} on {url} with {workers} workers", err=True)
        serve_workers(settings, sock, workers, **tls)


keys_app = typer.Typer(no_args_is_help=True, help="Consumer keys of a run (one task each).")
app.add_typer(keys_app, name="keys")


@keys_app.command("issue")
def keys_issue(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    task: Annotated[str, typer.Option(help="The public task the key may read.")],
    ttl: Annotated[float | None, typer.Option(help="Seconds until the key expires.")] = None,
) -> None:
    """Issue a key for one task; the secret is printed once and stored only hashed."""
    _require_serve_extra()
    from .serve.keys import MAX_TTL
    from .serve.listen import check_seconds
    from .serve.server import key_store

    if ttl is not None:  # leave it out for a key that lasts until revoked
        check_seconds(ttl, "--ttl", maximum=MAX_TTL)
    tasks = read_tasks(run_dir)
    if task not in tasks:
        raise MetaMorphosisError(f"task {task!r} is not a public task of this run: {tasks}")
    issued = key_store(run_dir, _tell).issue(task, ttl=ttl)
    typer.echo(f"key id: {issued.record.key_id}  task: {task}", err=True)
    typer.echo("secret (shown once, store it now):", err=True)
    typer.echo(issued.secret)


@keys_app.command("list")
def keys_list(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """Key ids, tasks, expiry and status (never secrets)."""
    import time as _time

    _require_serve_extra()
    from .serve.server import key_store

    records = key_store(run_dir, _tell).list()
    now = _time.time()
    typer.echo(f"{'key id':<14}{'task':<16}{'status':<10}expires")
    for record in records:
        expires = "never" if record.expires_at is None else _time.ctime(record.expires_at)
        typer.echo(f"{record.key_id:<14}{record.task:<16}{record.status(now):<10}{expires}")


@keys_app.command("revoke")
def keys_revoke(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID")],
) -> None:
    """Revoke a key; a running server refuses it from its next request on."""
    _require_serve_extra()
    from .serve.server import key_store

    key_store(run_dir, _tell).revoke(key_id)
    typer.echo(f"revoked {key_id}")


def _consume_training(
    url: str, task: str, key: str, config_path: Path, data_root, verify: bool | str, wait: float
) -> tuple[int, int]:
    """A remote consumer: its head and labels from the same config as the producer's.

    Returns the steps answered and how many of them stepped the head with DP-SGD.
    """
    from .config import load_config
    from .serve.client import ConsumerClient
    from .train.remote import remote_consumer

    config = load_config(config_path)
    if task not in [s.name for s in config.tasks]:
        raise MetaMorphosisError(f"task {task!r} is not a public task of {config_path}")
    side, labels_of = remote_consumer(config, task, data_root=data_root)
    with ConsumerClient(url, task=task, key=key, verify=verify) as client:
        steps = client.train(side, labels_of, unreachable_timeout=wait)
    return steps, side.dp_steps


def read_tasks(run_dir: Path) -> list[str]:
    from .rundir import read_run_json

    return list(read_run_json(run_dir)["tasks"])


@app.command()
def consume(
    url: Annotated[str, typer.Argument(help="The producer service's base URL.")],
    task: Annotated[str, typer.Option(help="The subscribed task.")],
    key: Annotated[str, typer.Option(envvar="METAMORPHOSIS_KEY", help="The task's key.")],
    out: Annotated[
        Path | None, typer.Option(help="Safetensors file to write (features + ids).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Items to fetch, from the first.")] = 64,
    encoding: Annotated[str, typer.Option(help="float32, float16 or int8.")] = "float32",
    train_config: Annotated[
        Path | None,
        typer.Option("--train", help="Instead: be TASK's consumer in `train --remote` of CONFIG."),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="With --train: dataset folder for this consumer's labels.")
    ] = None,
    cafile: Annotated[
        str | None, typer.Option(help="CA bundle to verify the producer's TLS certificate.")
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            help="With --train: seconds the producer may be unreachable (starting, restarting)."
        ),
    ] = 120.0,
) -> None:
    """Fetch the first LIMIT items' features of TASK into a safetensors file (or --train)."""
    _require_serve_extra()
    _check_consume(url, task, key, wait, cafile)
    if train_config is not None:
        steps, dp_steps = _consume_training(
            url, task, key, train_config, data_root, cafile or True, wait
        )
        typer.echo(
            f"{task}: answered {steps} training steps ({dp_steps} with DP-SGD on the head); "
            "head sent to the producer"
        )
        return
    if out is None:
        raise MetaMorphosisError("give --out FILE to fetch features or --train CONFIG to train")
    _check_fetch(limit, encoding, out)
    count, shape = _fetch_features(url, task, key, out, limit, encoding, cafile)
    typer.echo(f"{count} items, features {shape} -> {out}")


def _check_consume(url: str, task: str, key: str, wait: float, cafile: str | None) -> None:
    """What ``consume`` can refuse before connecting, naming the argument."""
    from urllib.parse import urlsplit

    from .serve.keys import valid_task_name
    from .serve.listen import check_seconds

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port or an unclosed [ipv6
        ok = False
    if not ok:
        raise MetaMorphosisError(f"URL {url!r} is invalid: expected http(s)://HOST[:PORT]")
    if not valid_task_name(task):
        raise MetaMorphosisError(
            f"--task {task!r} is invalid: expected letters, digits, '_', '.', '-'"
        )
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        # never echoed: it may be a real secret with a typo
        raise MetaMorphosisError("--key is not a key: expected the mmk_... secret of `keys issue`")
    check_seconds(wait, "--wait", zero=True)
    if cafile is not None and not Path(cafile).is_file():
        raise MetaMorphosisError(f"--cafile {cafile!r} is not a file: expected a PEM CA bundle")


def _check_fetch(limit: int, encoding: str, out: Path) -> None:
    from .serve.codec import ENCODINGS
    from .serve.listen import check_positive

    check_positive(limit, "--limit")
    if encoding not in ENCODINGS:
        raise MetaMorphosisError(
            f"--encoding {encoding!r} is invalid: expected one of {', '.join(ENCODINGS)}"
        )
    if out.is_dir() or not out.parent.is_dir():
        raise MetaMorphosisError(f"--out {out} is invalid: expected a file in an existing folder")


def _fetch_features(
    url: str, task: str, key: str, out: Path, limit: int, encoding: str, cafile: str | None
) -> tuple[int, list[int]]:
    """The first ``limit`` items' features into ``out``; their count and the tensor's shape."""
    import json as _json

    import torch
    from safetensors.torch import save_file

    from .serve.client import ConsumerClient

    with ConsumerClient(url, task=task, key=key, verify=cafile or True) as client:
        batches = list(client.iter_features(limit=limit, encoding=encoding))
    if not batches:
        raise MetaMorphosisError(f"the service has no items for task {task!r}")
    tensor = torch.cat([features for features, _ in batches])
    ids = [i for _, answered in batches for i in answered]
    metadata = {"ids": _json.dumps(ids), "task": task}
    try:
        save_file({"features": tensor}, str(out), metadata=metadata)
    except OSError as exc:
        raise MetaMorphosisError(f"--out {out} cannot be written: {exc.strerror}") from exc
    return len(ids), list(tensor.shape)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
