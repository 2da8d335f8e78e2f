"""RunConfig: every setting of a run, resolved once from CLI, ini and ``[tool.pytest_vllm]``.

Each option is declared once in ``OPTIONS``; the plugin turns that table into CLI flags (group
"vllm" in ``pytest --help``) and ini keys. Precedence: CLI flag > ini key (``vllm_<name>`` in
pytest.ini / ``[tool.pytest.ini_options]``) > ``[tool.pytest_vllm]`` in pyproject.toml > default.
"""

from __future__ import annotations

import math
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pytest_vllm import redact
from pytest_vllm.errors import UsageError
from pytest_vllm.models.shapes import DEFAULT_SHAPE, SHAPES

Kind = Literal["str", "bool", "float", "int", "list"]


@dataclass(frozen=True)
class Option:
    """One setting: CLI ``flag``, ini key ``vllm_<name>``, ``[tool.pytest_vllm]`` key ``<name>``."""

    name: str
    flag: str
    help: str
    kind: Kind = "str"
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()  # the values a "str" option takes (case-insensitive)
    # (low, high) of a number option: finite, above low, at most high; None: any number
    bounds: tuple[float, float] | None = None

    @property
    def dest(self) -> str:
        return f"vllm_{self.name}"

    @property
    def ini_name(self) -> str:
        return f"vllm_{self.name}"


OPTIONS: tuple[Option, ...] = (
    Option("gpu", "--gpu", "GPU profile to run under and to pick baselines for (cpu, l4, l40s, a100, "
           "h100, h200, ...); detected from the machine when absent", metavar="PROFILE"),
    Option("gpu_force", "--gpu-force", "run the --gpu profile even if the machine has another device",
           kind="bool", default=False),
    Option("base_model", "--base-model", "base model: local path or hub id (default: the embedded "
           "SmolLM2-135M-Instruct pair, built by `pytest-vllm models build`); with --vllm-url, the model "
           "name requests ask the base server for (default: the first its /v1/models lists)", metavar="MODEL"),
    Option("compressed_model", "--compressed-model", "compressed (quantized) model: local path or hub id "
           "(default: the embedded W8A8 checkpoint on cpu; online FP8 of the base model on GPUs); with "
           "--vllm-url, the model name requests ask the compressed server for", metavar="MODEL"),
    Option("perf_model", "--vllm-perf-model", "the pair the perf suite (tests marked vllm_perf_pair) measures: "
           f"auto (default: --base-model/--compressed-model when given, else on GPU profiles the {DEFAULT_SHAPE} "
           "shape, on cpu the embedded pair), a shape of random weights built from the base checkout's tokenizer "
           f"(load_format=dummy, bf16 and its online FP8: {', '.join(SHAPES)}), user (--base-model and "
           "--compressed-model, real weights) or embedded (the embedded pair)", default="auto",
           metavar="auto|SHAPE|user|embedded", choices=("auto", "user", "embedded", *SHAPES)),
    Option("url", "--vllm-url", "test a running server instead of booting one: [ROLE=]URL, ROLE is base "
           "(the default) or compressed; repeat for both. Several replicas of one role behind the tool's own "
           "balancer: ROLE=URL1,URL2 (load spreads over them, conformance and smoke run on each)", kind="list",
           default=(), metavar="[ROLE=]URL[,URL...]"),
    Option("balance", "--vllm-balance", "how the load client spreads requests over a role's replicas: "
           "round_robin (default: in turn) or least_outstanding (to the replica with the fewest requests in flight)",
           default="round_robin", metavar="round_robin|least_outstanding",
           choices=("round_robin", "least_outstanding")),
    Option("api_key", "--vllm-api-key", "API key: every client sends it, and booted servers are started with it "
           "(vLLM's --api-key, through the server's environment); default $VLLM_API_KEY, else none (an inherited "
           "VLLM_API_KEY is never passed to a server otherwise). Never printed or written",
           metavar="KEY"),
    # Bounds: a boot that downloads a large checkpoint may take an hour, never a day; a server that
    # ignores SIGTERM for ten minutes is stuck, and "inf" would hang the run at its end.
    Option("startup_timeout", "--vllm-startup-timeout", "seconds a server may take to become ready",
           kind="float", default=900.0, metavar="SECONDS", bounds=(0.0, 86400.0)),
    Option("stop_timeout", "--vllm-stop-timeout", "seconds between SIGTERM and SIGKILL when stopping a server",
           kind="float", default=15.0, metavar="SECONDS", bounds=(0.0, 600.0)),
    Option("log_dir", "--vllm-log-dir", "folder for server logs (one file per server)",
           default=".pytest_vllm/logs", metavar="DIR"),
    Option("python", "--vllm-python", "python interpreter that has vLLM installed (default: pytest's own)",
           metavar="PATH"),
    Option("keep_order", "--vllm-keep-order", "run tests in file order instead of grouping tests that "
           "share a server (grouping boots each server once)", kind="bool", default=False),
    Option("update_baselines", "--update-baselines", "record this run's measurements as the baselines "
           "(locked atomic writes; only measurements without failed requests are written)", kind="bool",
           default=False),
    Option("add_baselines", "--add-baselines", "add this run's performance measurements to the stored "
           "baselines as one more recording instead of replacing them: each baseline becomes the median of its "
           "newest 5 recordings, for runners whose hosts differ (a changed server spec or workload is refused: "
           "replace it with --update-baselines)", kind="bool", default=False),
    Option("baseline_dir", "--vllm-baseline-dir",
           "folder of baseline files (layout <gpu>/<model>/<module>/<test>.json)", default="baselines", metavar="DIR"),
    Option("missing_baseline", "--vllm-missing-baseline", "what a measurement without a baseline does: auto "
           "(default: on a host class with no baselines for the model, relative budgets are not judged and one line "
           "says so; a missing entry of a recorded class fails), fail (always) or skip", default="auto",
           metavar="auto|fail|skip", choices=("auto", "fail", "skip")),
    Option("baseline_gate", "--vllm-baseline-gate", "what a single server's budget relative to its stored "
           "baseline does when out of budget: fail, report (its verdict reads OVER (report only) and the test "
           "passes), or auto (default: report on the cpu profile, whose shared hosts ran healthy sessions 10-28% "
           "slow; fail on GPU profiles). Pair ratios, absolute budgets and counter checks always gate",
           default="auto", metavar="auto|fail|report", choices=("auto", "fail", "report")),
    Option("host_class", "--vllm-host-class", "the host class performance baselines are filed under and looked "
           "up by (default: derived from this machine, e.g. cpu-amd-avx512bf16-2c or h200-140g); set it only "
           "for runners you know to be alike", metavar="CLASS"),
    Option("repeats", "--vllm-repeats", "repetitions of every measurement (odd; the median gates); default: the "
           "workload's own (3)", kind="int", metavar="N"),
    Option("prompt_seed", "--vllm-prompt-seed", "mixed into every workload's prompts (default 0: the same prompts "
           "in every run, so runs and baselines compare the same work); another value draws new prompts of the same "
           "shape, for a long-running --vllm-url server whose prefix cache still holds the last run's",
           kind="int", default=0, metavar="N"),
    Option("false_alarm_rate", "--vllm-false-alarm-rate", "the rate at which a relative budget may fail a healthy "
           "server: its tolerance is at least the noise floor this rate sets from the measured noise (within a run, "
           "between boots and hosts of the class) ...", kind="float", default=0.01, metavar="RATE"),
    Option("max_tolerance", "--vllm-max-tolerance", "... but never beyond this fraction of the baseline (a "
           "floor above it is capped and said)", kind="float", default=0.25, metavar="FRACTION"),
    Option("report_dir", "--vllm-report-dir", "folder for results.json, summary.md and report.html",
           default=".pytest_vllm/reports", metavar="DIR"),
    Option("conformance_profile", "--vllm-conformance-profile", "hypothesis profile of the OpenAI conformance "
           "properties: ci (bounded examples, derandomized, no shrinking) or nightly (10x examples, random, "
           "shrinking)", default="ci", metavar="ci|nightly", choices=("ci", "nightly")),
    # 0.8 from the embedded pair, 6 forced requests at temperature 0 (2026-12-02): base 6/6 valid
    # calls, W8A8 5/6; 0.9 failed that. It lets one call in six go and fails at two lost (-33%):
    # with 6 requests nothing finer is resolvable.
    Option("tool_call_budget", "--vllm-tool-call-budget", "the compressed server's rate of valid tool calls over "
           "the conformance suite's forced tool requests must be at least this fraction of the base server's",
           kind="float", default=0.8, metavar="FRACTION", bounds=(0.0, 1.0)),
)

# Sub-tables [tool.pytest_vllm.<name>] beside the options.
TABLES = ("budgets", "accuracy")

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class RemoteURLs:
    """The --vllm-url servers: ``base``/``compressed`` is each role's first replica (what a
    single-server code path talks to), ``replicas`` every replica of a role, in the order given."""

    base: str | None = None
    compressed: str | None = None
    replicas: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def for_role(self, role: str) -> str | None:
        return getattr(self, role, None)

    def replicas_of(self, role: str) -> tuple[str, ...]:
        """Every replica of ``role`` (one for a plain ``--vllm-url``; none when the role has no URL)."""
        first = self.for_role(role)
        return tuple(self.replicas.get(role) or ((first,) if first else ()))

    @property
    def any(self) -> bool:
        return bool(self.base or self.compressed)


@dataclass(frozen=True)
class RunConfig:
    """The resolved settings of one pytest session (see OPTIONS for each one's meaning)."""

    rootdir: Path
    gpu: str | None = None
    gpu_force: bool = False
    base_model: str | None = None
    compressed_model: str | None = None
    perf_model: str = "auto"
    urls: RemoteURLs = field(default_factory=RemoteURLs)
    balance: str = "round_robin"
    api_key: str = "EMPTY"
    startup_timeout: float = 900.0
    stop_timeout: float = 15.0
    log_dir: Path = Path(".pytest_vllm/logs")
    python: str = sys.executable
    keep_order: bool = False
    update_baselines: bool = False
    add_baselines: bool = False
    baseline_dir: Path = Path("baselines")
    missing_baseline: str = "auto"
    baseline_gate: str = "auto"
    host_class: str | None = None
    repeats: int | None = None
    prompt_seed: int = 0
    false_alarm_rate: float = 0.01
    max_tolerance: float = 0.25
    report_dir: Path = Path(".pytest_vllm/reports")
    conformance_profile: str = "ci"
    tool_call_budget: float = 0.8
    budgets: Mapping[str, Any] = field(default_factory=dict)  # [tool.pytest_vllm.budgets]
    accuracy: Mapping[str, Any] = field(default_factory=dict)  # [tool.pytest_vllm.accuracy]

    @classmethod
    def from_values(cls, rootdir: Path, values: Mapping[str, Any], environ: Mapping[str, str]) -> RunConfig:
        """Build from already-merged raw values keyed by option name (strings allowed)."""
        get = lambda name: coerce(OPTIONS_BY_NAME[name], values.get(name))  # noqa: E731
        under_root = lambda p: p if p.is_absolute() else rootdir / p  # noqa: E731
        missing = str(get("missing_baseline"))
        false_alarm_rate, max_tolerance = float(get("false_alarm_rate")), float(get("max_tolerance"))
        if not 0 < false_alarm_rate < 0.5:
            raise UsageError(f"--vllm-false-alarm-rate must be between 0 and 0.5 (0.01 is 1%), not {false_alarm_rate}")
        if not 0 < max_tolerance < 1:
            raise UsageError(f"--vllm-max-tolerance must be a fraction between 0 and 1 (0.25 is 25%), "
                             f"not {max_tolerance}")
        host_class = get("host_class")
        if host_class is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", host_class):
            raise UsageError(f"--vllm-host-class {host_class!r}: use letters, digits, '.', '_' and '-' (it names a "
                             "folder under the baseline directory)")
        repeats = get("repeats")
        if repeats is not None and (repeats < 1 or repeats % 2 == 0):
            raise UsageError(f"--vllm-repeats must be odd and positive (the median of an odd count), not {repeats}")
        conformance_profile = str(get("conformance_profile"))
        if get("update_baselines") and get("add_baselines"):
            raise UsageError("--update-baselines replaces the stored baselines and --add-baselines adds to them: "
                             "pass one of them")
        if get("perf_model") == "user" and not get("base_model"):
            raise UsageError("--vllm-perf-model user serves --base-model (and --compressed-model) in the perf suite, "
                             "but no --base-model was given: pass --base-model MODEL, or another --vllm-perf-model")
        budgets = values.get("budgets") or {}
        if not isinstance(budgets, Mapping):
            raise UsageError("[tool.pytest_vllm.budgets] must be a table of metric = \"budget\"")
        accuracy = values.get("accuracy") or {}
        if not isinstance(accuracy, Mapping):
            raise UsageError("[tool.pytest_vllm.accuracy] must be a table (keys: see pytest_vllm/accuracy/budgets.py)")
        return cls(
            rootdir=rootdir,
            gpu=get("gpu"),
            gpu_force=bool(get("gpu_force")),
            base_model=get("base_model"),
            compressed_model=get("compressed_model"),
            perf_model=str(get("perf_model")),
            urls=parse_urls(get("url")),
            balance=str(get("balance")),
            api_key=get("api_key") or environ.get("VLLM_API_KEY") or "EMPTY",
            startup_timeout=float(get("startup_timeout")),
            stop_timeout=float(get("stop_timeout")),
            log_dir=under_root(Path(str(get("log_dir")))),
            python=get("python") or sys.executable,
            keep_order=bool(get("keep_order")),
            update_baselines=bool(get("update_baselines")),
            add_baselines=bool(get("add_baselines")),
            baseline_dir=under_root(Path(str(get("baseline_dir")))),
            missing_baseline=missing,
            baseline_gate=str(get("baseline_gate")),
            host_class=host_class,
            repeats=repeats,
            prompt_seed=int(get("prompt_seed")),
            false_alarm_rate=false_alarm_rate,
            max_tolerance=max_tolerance,
            report_dir=under_root(Path(str(get("report_dir")))),
            conformance_profile=conformance_profile,
            tool_call_budget=float(get("tool_call_budget")),
            budgets=dict(budgets),
            accuracy=dict(accuracy),
        )


def coerce(option: Option, raw: Any) -> Any:
    """Turn a CLI/ini/TOML value into the option's type; None means "use the default"."""
    if raw is None or raw == "" or raw == []:
        return option.default
    try:
        if option.kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if option.kind == "float":
            return _within_bounds(option, raw, float(raw))
        if option.kind == "int":
            return _within_bounds(option, raw, int(raw))
        if option.kind == "list":
            if isinstance(raw, str):
                return tuple(raw.split())
            return tuple(str(v) for v in raw)
        if option.choices:
            value = str(raw).strip().lower()
            if value not in option.choices:
                raise UsageError(f"{option.flag} / {option.ini_name}: must be one of {', '.join(option.choices)}, "
                                 f"not {raw!r}")
            return value
        return str(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{option.flag} / {option.ini_name}: {raw!r} is not a valid {option.kind}") from None


def _within_bounds(option: Option, raw: Any, value: float) -> Any:
    """``value`` when finite and inside the option's bounds; a UsageError naming the range otherwise."""
    if option.bounds is None:
        return value
    low, high = option.bounds
    if not (math.isfinite(value) and low < value <= high):
        unit = f" of {option.metavar.lower()}" if option.metavar else ""
        raise UsageError(f"{option.flag} / {option.ini_name} / [tool.pytest_vllm] {option.name}: {raw!r} is out of "
                         f"range; give a finite number{unit} above {low:g} and at most {high:g} "
                         f"(default {option.default:g})")
    return value


def parse_urls(entries: tuple[str, ...]) -> RemoteURLs:
    """``--vllm-url http://h:8000`` (base), ``--vllm-url compressed=http://h:8001``, or several
    replicas of one role: ``--vllm-url base=http://a:8000,http://b:8000``.

    A malformed replica list (an empty entry, a URL twice) is refused here, before any server is
    asked; credentials in a URL (``http://user:pass@h``) are registered as secrets and masked."""
    found: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        role, sep, urls = entry.partition("=")
        if not sep or "://" in role:
            role, urls = "base", entry
        role = role.strip().lower()
        if role not in ("base", "compressed"):
            raise UsageError(f"--vllm-url {redact.text(entry)!r}: the role must be base or compressed (ROLE=URL)")
        if role in found:
            raise UsageError(f"--vllm-url names the {role} server twice; give its replicas in one entry: "
                             f"--vllm-url {role}=URL1,URL2")
        found[role] = _replica_urls(entry, role, urls)
    return RemoteURLs(base=found["base"][0] if "base" in found else None,
                      compressed=found["compressed"][0] if "compressed" in found else None,
                      replicas=found)


def _replica_urls(entry: str, role: str, urls: str) -> tuple[str, ...]:
    """The normalized URLs of one ``--vllm-url`` entry (comma-separated replicas)."""
    shown = redact.text(entry)
    parts = [part.strip() for part in urls.split(",")]
    if len(parts) > 1 and not all(parts):
        raise UsageError(f"--vllm-url {shown!r}: the replica list of the {role} server has an empty entry (a stray "
                         f"comma?); give it as {role}=URL1,URL2 with no empty item")
    replicas: list[str] = []
    for url in parts:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--vllm-url {shown!r}: give an http(s) URL such as http://localhost:8000")
        _register_credentials(url)
        url = url.rstrip("/").removesuffix("/v1")
        if url in replicas:
            raise UsageError(f"--vllm-url {shown!r}: the {role} server lists the replica {redact.text(url)} twice; "
                             "name each replica once (its load would be counted twice otherwise)")
        replicas.append(url)
    return tuple(replicas)


def _register_credentials(url: str) -> None:
    """A URL's password is a secret: masked in everything printed or written, also where it appears
    outside the URL (redact.text masks ``user:password@`` inside URLs already)."""
    password = urlsplit(url).password
    if password:
        redact.register(password)


def read_pyproject_table(rootdir: Path) -> dict[str, Any]:
    """``[tool.pytest_vllm]`` of rootdir/pyproject.toml; unknown keys are a usage error."""
    path = rootdir / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    table = data.get("tool", {}).get("pytest_vllm", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.pytest_vllm] must be a table")
    return table


def check_table_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
