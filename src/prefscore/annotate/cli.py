"""``prefscore annotate``: serve the annotation app, manage annotators, report and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import PrefscoreError
from .db import Store, StoreError
from .export import AGGREGATES, ExportOptions, export_pairs
from .inputs import load_candidates
from .scheduling import SchedulerConfig

console = Console(soft_wrap=True)  # links, tokens and paths are never broken across lines
err_console = Console(stderr=True, soft_wrap=True)

annotate_app = typer.Typer(no_args_is_help=True, help="Collect human pairwise judgements in the browser, with a live leaderboard.")

DB_OPTION = typer.Option(Path("annotations.sqlite"), "--db", help="The annotation database (SQLite; `serve --create` makes a new one).")


def _fail(message: str) -> None:
    err_console.print(f"[red]error[/] {message}")
    raise typer.Exit(1)


def _require(db: Path) -> None:
    if not db.is_file():
        _fail(f"{db}: no such annotation database (a mistyped --db? start a new one with "
              f"`prefscore annotate serve --images ... --db {db} --create`)")


def _open(db: Path) -> Store:
    _require(db)
    return Store(db)


def reachable_host(host: str) -> str:
    """The address others can use to reach a server bound to ``host``: for the wildcard addresses
    (``0.0.0.0``, ``::``) the address of the interface that carries outgoing traffic (no packet is sent),
    else ``host`` itself."""
    import socket

    if host not in ("0.0.0.0", "::", ""):
        return host
    family, probe = (socket.AF_INET6, "2001:db8::1") if host == "::" else (socket.AF_INET, "192.0.2.1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))  # UDP connect only picks a route
            return s.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"


def register(app: typer.Typer) -> None:
    """Add the ``annotate`` command group to the main ``prefscore`` app."""
    app.add_typer(annotate_app, name="annotate")


@annotate_app.command("serve")
def serve_cmd(
    images: Optional[Path] = typer.Option(None, "--images", help="Folder DIR/<prompt-id>/<generator>.png, or a CSV/JSONL/Parquet with "
                                          "columns prompt, image [, generator, prompt_id, metric scores...]. Optional once the database has images."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="For folder input: .txt (line i = prompt id i), .json {id: prompt} or a table with prompt_id, prompt."),
    db: Path = DB_OPTION,
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default; 0.0.0.0 exposes it to your network)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    annotator: List[str] = typer.Option([], "--annotator", "-a", help="Create this annotator if missing and print their link (repeatable)."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated metric score columns of the table (default: every numeric column; '' for none)."),
    lower_is_better: List[str] = typer.Option([], "--lower-is-better", help="A metric column where lower is better (repeatable; "
                                              "registered prefscore metrics know their direction)."),
    min_votes: int = typer.Option(1, help="Answers per pair wanted before informative pairs are preferred."),
    repeat_rate: float = typer.Option(0.0, help="Probability that a pair is a repeat-consistency check of an earlier answer (0 = never)."),
    repeat_gap: int = typer.Option(5, help="Answers between a pair and its repeat."),
    seed: int = typer.Option(0, help="Seed of the pair choice."),
    create: bool = typer.Option(False, "--create", help="Create --db if it does not exist (without it a missing database is an error, "
                                "so a mistyped path never starts an empty study)."),
    public_leaderboard: bool = typer.Option(False, "--public-leaderboard", help="Serve the leaderboard (generator names and "
                                            "strengths) without its token."),
) -> None:
    """Start the annotation server: annotators open the printed links; the leaderboard link (with its token) is printed too."""
    try:
        import uvicorn

        from .app import create_app, hosts_for
    except ImportError as exc:
        _fail(f"serving needs FastAPI and uvicorn ({exc}): pip install fastapi uvicorn")
    try:
        scheduler = SchedulerConfig(min_votes=min_votes, repeat_rate=repeat_rate, repeat_gap=repeat_gap, seed=seed)
    except ValueError as exc:
        _fail(str(exc))
    if not create:
        _require(db)  # a missing database is an error unless --create
    try:
        store = Store(db, scheduler)
        if images is not None:
            metric_list = None if metrics is None else [m.strip() for m in metrics.split(",") if m.strip()]
            cands, columns = load_candidates(images, prompts, metric_list, lower_is_better)
            new_items, new_pairs = store.register(cands, columns)
            console.print(f"registered {len(cands)} images ({new_items} new), {new_pairs} new pairs"
                          + (f", metrics: {', '.join(c.name for c in columns)}" if columns else ""))
        elif prompts is not None or metrics is not None or lower_is_better:
            _fail("--prompts, --metrics and --lower-is-better describe --images input: pass --images too")
        counts = store.counts()
        if counts["pairs"] == 0:
            _fail(f"{db}: no pairs to annotate (pass --images with at least two images for some prompt)")
        reach = reachable_host(host)
        shown_host = f"[{reach}]" if ":" in reach else reach
        base = f"http://{shown_host}:{port}"
        known = {a["name"] for a in store.annotators()}
        for name in annotator:
            if name in known:
                console.print(f"annotator {name!r} exists (token unchanged; `prefscore annotate reset-token {name}` makes a new one)")
            else:
                token = store.add_annotator(name)
                console.print(f"annotator {name!r}: {base}/?token={token}")
    except (PrefscoreError, StoreError) as exc:
        _fail(str(exc))
    if not store.annotators():
        console.print("[yellow]no annotators yet:[/] add some with `prefscore annotate add-annotator NAME --db "
                      f"{db}` (the server picks them up at once)")

    console.print(f"{counts['pairs']} pairs of {counts['items']} images over {counts['prompts']} prompts; "
                  f"{counts['judgements']} answers so far")
    if hosts_for(host) is None:
        err_console.print(f"[yellow]warning:[/] bound to {host}: the server is reachable from other machines "
                          + ("on every network interface" if host in ("0.0.0.0", "::") else f"at {host}")
                          + f" (as {base}); annotators still need their tokens, but anyone on the network can try. "
                          "Use the default 127.0.0.1 (or an SSH tunnel / HTTPS proxy) unless that is what you want.")
    board = f"{base}/leaderboard" if public_leaderboard else f"{base}/leaderboard?token={store.leaderboard_token()}"
    console.print(f"annotate: {base}/   leaderboard: {board}"
                  + ("   (public: no token needed)" if public_leaderboard else "   (keep this link from the annotators)")
                  + "   (Ctrl+C stops; answers are saved as they come)")
    uvicorn.run(create_app(store, allowed_hosts=hosts_for(host), public_leaderboard=public_leaderboard), host=host, port=port,
                log_level="warning")


@annotate_app.command("add-annotator")
def add_annotator_cmd(
    name: str = typer.Argument(..., help="The annotator's name (shown on the leaderboard and in the export)."),
    db: Path = DB_OPTION,
    token: Optional[str] = typer.Option(None, help="Use this token (>= 16 characters) instead of a random one."),
    url: str = typer.Option("http://127.0.0.1:8000", help="Server address used in the printed link."),
) -> None:
    """Create an annotator and print their token and sign-in link (works while the server runs)."""
    try:
        token = _open(db).add_annotator(name, token)
    except StoreError as exc:
        _fail(str(exc))
    console.print(f"annotator {name!r}\n  token: {token}\n  link:  {url.rstrip('/')}/?token={token}")


@annotate_app.command("leaderboard-link")
def leaderboard_link_cmd(db: Path = DB_OPTION,
                         url: str = typer.Option("http://127.0.0.1:8000", help="Server address used in the printed link."),
                         reset: bool = typer.Option(False, "--reset", help="Make a new leaderboard token (old links stop working at once).")) -> None:
    """Print the leaderboard link with its token (annotator tokens do not open the leaderboard)."""
    token = _open(db).leaderboard_token(reset=reset)
    console.print(f"leaderboard: {url.rstrip('/')}/leaderboard?token={token}")


@annotate_app.command("reset-token")
def reset_token_cmd(name: str = typer.Argument(...), db: Path = DB_OPTION,
                    url: str = typer.Option("http://127.0.0.1:8000", help="Server address used in the printed link.")) -> None:
    """Give an annotator a new token (the old one stops working at once)."""
    try:
        token = _open(db).reset_token(name)
    except StoreError as exc:
        _fail(str(exc))
    console.print(f"annotator {name!r}\n  token: {token}\n  link:  {url.rstrip('/')}/?token={token}")


@annotate_app.command("revoke-annotator")
def revoke_cmd(name: str = typer.Argument(...), db: Path = DB_OPTION,
               restore: bool = typer.Option(False, "--restore", help="Re-enable a revoked annotator instead.")) -> None:
    """Stop an annotator's token from working (their answers are kept), or --restore it."""
    try:
        _open(db).set_active(name, restore)
    except StoreError as exc:
        _fail(str(exc))
    console.print(f"annotator {name!r} {'restored' if restore else 'revoked'}")


@annotate_app.command("list-annotators")
def list_cmd(db: Path = DB_OPTION) -> None:
    """Annotators, whether active, and how many answers each gave."""
    table = Table(title=f"annotators in {db}")
    for col in ("name", "active", "answers"):
        table.add_column(col)
    for a in _open(db).annotators():
        table.add_row(a["name"], "yes" if a["active"] else "revoked", str(a["answers"]))
    console.print(table)


@annotate_app.command("report")
def report_cmd(db: Path = DB_OPTION, as_json: bool = typer.Option(False, "--json", help="Print the leaderboard data as JSON.")) -> None:
    """The leaderboard in the terminal: generator strengths, metric agreement, annotator agreement."""
    from .report import leaderboard  # scipy via the evaluation statistics: only when asked

    data = leaderboard(_open(db))
    if as_json:
        console.print_json(json.dumps(data))
        return
    c = data["counts"]
    console.print(f"{c['answers']} answers ({c['ties']} ties, {c['skips']} skips, {c['repeats']} repeats) on "
                  f"{c['pairs_covered']}/{c['pairs']} pairs by {c['annotators']} annotators")
    t = Table(title="Bradley-Terry strengths (log-odds, mean 0, 95% interval)")
    for col in ("rank", "generator", "strength", "95% interval", "W/L/T", "comparisons"):
        t.add_column(col)
    for g in data["generators"]:
        t.add_row(str(g["rank"]), g["generator"], f"{g['strength']:+.2f}", f"[{g['ci_low']:+.2f}, {g['ci_high']:+.2f}]",
                  f"{g['wins']}/{g['losses']}/{g['ties']}", str(g["comparisons"]))
    console.print(t)
    f = lambda x, p=True: "-" if x is None else (f"{100 * x:.1f}%" if p else f"{x:.2f}")  # noqa: E731
    t = Table(title="Metric agreement with the humans (ties excluded)")
    for col in ("metric", "agreement", "95% interval", "pairs", "Spearman vs BT"):
        t.add_column(col)
    for m in data["metrics"]:
        t.add_row(m["metric"], f(m["agreement"]), f"[{f(m['ci_low'])}, {f(m['ci_high'])}]", str(m["pairs"]), f(m["generator_rank_spearman"], False))
    console.print(t)
    a = data["agreement"]
    console.print(f"inter-annotator: pairwise agreement {f(a['pairwise'])} over {a['annotator_pairs']} annotator pairs, "
                  f"Krippendorff's alpha {f(a['krippendorff_alpha'], False)}")
    t = Table(title="Annotators")
    for col in ("annotator", "answers", "ties", "skips", "agreement with others", "self-consistency"):
        t.add_column(col)
    for u in data["annotators"]:
        t.add_row(u["annotator"], str(u["answers"]), str(u["ties"]), str(u["skips"]), f(u["agreement_with_others"]),
                  f"{f(u['self_consistency'])} ({u['repeats']})")
    console.print(t)


@annotate_app.command("export")
def export_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="Pairs file to write: .csv, .tsv, .jsonl or .parquet."),
    db: Path = DB_OPTION,
    aggregate: str = typer.Option("none", help=f"{' | '.join(AGGREGATES)}: one row per answer, or per pair by majority vote."),
    ties: bool = typer.Option(True, "--ties/--no-ties", help="Keep answers that were ties."),
    repeats: bool = typer.Option(False, "--repeats/--no-repeats", help="Also export repeat-consistency answers."),
) -> None:
    """Write the answers as the pairs file `prefscore train` and `prefscore evaluate` read."""
    try:
        n = export_pairs(_open(db), output, ExportOptions(aggregate=aggregate, ties=ties, repeats=repeats))
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"wrote {n} pairs to {output}")
