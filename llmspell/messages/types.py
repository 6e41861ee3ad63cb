"""Every message llmspell actors exchange, one slotted dataclass each.

Messages are not declared ``frozen``: a frozen 18-field dataclass costs about
6 us to build against 0.8 us for a plain slotted one, and every task crosses
the codec four times (measured on this project's 2-core machine). Treat a
message as frozen once it is sent (build a new one with
``dataclasses.replace``). The few places that change one do so while they
still own it, before it is sent or after it arrived and was decoded: the
builders of a ``TaskSpec`` (``_task``, ``workflow``), the task table filling
a dependant's ``input`` and keeping an engine's ``TaskOutcome`` as the record's
own (``table.table``), the facade setting a spec's parent and trace before encoding it.

Every class is a plain name; the wire tags of control messages an actor
sends itself (the tick of a script engine, the embedded driver's poll) start
with ``_``. Field comments say who sends the message to whom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codec import Address, Message, message

__all__ = [
    "Ack",
    "AggregationEnded",
    "Attached",
    "CancelReply",
    "CancelTasks",
    "Coordinate",
    "CoordinationDone",
    "CrashEngine",
    "DispatchBatch",
    "EngineEvent",
    "EngineLoad",
    "EngineReady",
    "EngineResults",
    "EngineUsage",
    "EventDelivery",
    "EventInterest",
    "Hello",
    "HostCalls",
    "InjectFaults",
    "Introduce",
    "LaneAsk",
    "LaneMark",
    "LaneOffer",
    "Ping",
    "Poll",
    "Pong",
    "ProgressBatch",
    "ProgressReply",
    "ProgressReport",
    "Publish",
    "PublishBatch",
    "QueryProgress",
    "QueryStats",
    "QueryStatus",
    "QueryTasks",
    "Register",
    "Registered",
    "Replaced",
    "RequestStop",
    "ResourceGrant",
    "ResourceWait",
    "Shutdown",
    "SpanRecords",
    "StartAggregation",
    "StatsReply",
    "StatusReply",
    "StopAggregation",
    "StopTasks",
    "StreamAck",
    "StreamChunks",
    "SubmitRejected",
    "SubmitTasks",
    "Subscribe",
    "SupervisorEvent",
    "TaskError",
    "TaskOutcome",
    "TaskOutcomes",
    "TaskSpec",
    "TasksReply",
    "Tick",
    "TraceTo",
    "Unsubscribe",
    "Via",
    "WatchTasks",
]

PRIORITIES = {"low": 0, "normal": 1, "high": 2, "critical": 3}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}
KINDS = ("python", "lua", "js", "tool", "agent", "hook", "event", "workflow", "custom")
STATUSES = ("pending", "running", "succeeded", "failed", "cancelled", "timed_out")
TERMINAL = frozenset(("succeeded", "failed", "cancelled", "timed_out"))


@message("task")
@dataclass(slots=True)
class TaskSpec(Message):
    """One unit of work, as the scheduler and engines see it."""

    id: str
    kind: str  # one of KINDS
    code: str | None = None  # lua / js: the body of a function
    target: str | None = None  # python: "module:function"
    name: str | None = None  # tool / agent / hook point / event / custom kind
    args: Any = None  # python kwargs, spell.args
    payload: Any = None  # tool params, agent input, hook/event/custom payload
    input: Any = None  # pipeline or dependency input (spell.input / input=)
    priority: int = 1  # 0 low .. 3 critical
    timeout: float | None = None  # seconds, counted from when the task starts running
    # None rather than empty containers: fewer allocations per task (the
    # cyclic GC's cost grows with them; measured 25% of per-task time)
    deps: list[str] | None = None
    retries: int = 0
    limits: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    options: dict[str, Any] | None = None  # kind-specific (execution, buffer_size)
    parent: str | None = None  # id of the task that submitted this one
    compensate: TaskSpec | None = None
    deps_input: bool = False  # deliver dependency results as input (workflows)
    # W3C traceparent of the submitter's span (the application's current span
    # for rt.submit); the task's span becomes its child (llmspell._tracing)
    trace: str | None = None
    # cluster mode: run only on a member that has every one of these tags
    tags: list[str] | None = None


# -- task lifecycle ---------------------------------------------------------


@message("submit")
@dataclass(slots=True)
class SubmitTasks(Message):
    """facade/engine -> scheduler: queue these tasks. With ``notify`` the
    sender gets a ``TaskOutcomes`` for each when it ends. With ``cancelled``
    (a reason) the tasks are recorded as cancelled and never run (an
    aggregator's tasks that never started)."""

    tasks: list[TaskSpec]
    notify: bool = True
    # when set: record the tasks as cancelled with this reason, never run them
    # (an aggregator's tasks that never started, so each still ends in one state)
    cancelled: str | None = None
    # a script resumed from a journal submits again what its first run had
    # submitted (same ids): a task already known is then taken as is, not refused
    replayed: bool = False


@message("submit_rejected")
@dataclass(slots=True)
class SubmitRejected(Message):
    """scheduler -> submitter: this task was not queued (e.g. duplicate id)."""

    task_id: str
    message: str


@dataclass(slots=True)
class TaskError:
    """A task's failure, as ``TaskOutcome.error`` carries it.

    On the wire (and in the journal) it stays a plain dict, ``wire()``: the
    fields that are set, ``None`` ones left out. Readers take what is absent as
    kind ``"failed"``, engine ``"runtime"`` (``error_from_outcome``). The
    scheduler adds ``attempts`` (earlier attempts' messages), ``cause`` and
    ``shutdown`` to the dicts of tasks it retried or ended itself.
    """

    message: str
    kind: str | None = None  # "failed", "script", "resource", "cancelled", "degraded", ...
    engine: str | None = None  # the engine that ran it, or "runtime"/"workflow"
    traceback: str | None = None
    data: Any = None  # what a script threw, when it threw data

    def wire(self) -> dict[str, Any]:
        """The dict ``TaskOutcome.error`` holds."""
        e: dict[str, Any] = {"message": self.message}
        if self.kind is not None:
            e["kind"] = self.kind
        if self.engine is not None:
            e["engine"] = self.engine
        if self.traceback is not None:
            e["traceback"] = self.traceback
        if self.data is not None:
            e["data"] = self.data
        return e


@message("outcome")
@dataclass(slots=True)
class TaskOutcome(Message):
    """How a task ended (engine -> scheduler; scheduler -> watchers).

    ``error``: a ``TaskError``'s wire dict.
    """

    task_id: str
    status: str  # a terminal status
    value: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    attempt: int = 0


@message("outcomes")
@dataclass(slots=True)
class TaskOutcomes(Message):
    """scheduler -> watcher: a batch of ended tasks."""

    items: list[TaskOutcome]


@message("engine_results")
@dataclass(slots=True)
class EngineResults(Message):
    """engine -> scheduler: tasks that ended on the engine, in one batch."""

    items: list[TaskOutcome]


@message("dispatch")
@dataclass(slots=True)
class DispatchBatch(Message):
    """scheduler -> engine: start these tasks; ``attempts[i]`` is the attempt
    number of ``tasks[i]`` (0 for the first run, 1.. for retries)."""

    tasks: list[TaskSpec]
    attempts: list[int]
    # with a journal: per task, the host calls its earlier runs made (None: none),
    # each ``[n, op, call, result, error, done]`` (see ``HostCalls``)
    replays: list[list[list[Any]] | None] | None = None


@message("host_calls")
@dataclass(slots=True)
class HostCalls(Message):
    """script engine -> scheduler, only in a runtime with a journal: host calls
    scripts made (``spell.submit/await/sleep/wait_event/coordinate/emit`` and
    the clock reads), to be journaled. Each item is ``[task_id, attempt, n, op,
    call, result, error, done]``: ``n`` counts the task's host calls from 1,
    ``call`` the arguments that identify it, ``done`` False for a call made but
    not answered yet (a sleep's wake-up time is in ``call``), True once
    ``result`` (or ``error``, a message) is known. An ``emit`` is published by
    the scheduler once journaled, not by the engine."""

    items: list[list[Any]]


@message("cancel")
@dataclass(slots=True)
class CancelTasks(Message):
    """facade/engine -> scheduler: cancel these tasks if not finished. With a
    ``ref`` other than 0 the scheduler answers with ``CancelReply``."""

    task_ids: list[str]
    reason: str = "cancelled by the user"
    ref: int = 0


@message("cancel_reply")
@dataclass(slots=True)
class CancelReply(Message):
    """scheduler -> canceller: the ids that were not finished and are now cancelled."""

    ref: int
    cancelled: list[str]


@message("stop")
@dataclass(slots=True)
class StopTasks(Message):
    """scheduler -> engine: stop running these tasks now (cancel or timeout);
    the scheduler has already decided their terminal state."""

    task_ids: list[str]
    reason: str


@message("watch")
@dataclass(slots=True)
class WatchTasks(Message):
    """engine/aggregator -> scheduler: send me a ``TaskOutcomes`` when each ends
    (at once for those already ended)."""

    task_ids: list[str]


@message("progress")
@dataclass(slots=True)
class ProgressReport(Message):
    task_id: str
    completed_steps: float | None = None
    total_steps: float | None = None
    current_operation: str | None = None
    usage: dict[str, Any] | None = None


@message("progress_batch")
@dataclass(slots=True)
class ProgressBatch(Message):
    """engine -> scheduler: progress of running tasks."""

    items: list[ProgressReport]


# -- queries ----------------------------------------------------------------


@message("query_status")
@dataclass(slots=True)
class QueryStatus(Message):
    ref: int  # echoed in the reply
    task_ids: list[str]


@message("status_reply")
@dataclass(slots=True)
class StatusReply(Message):
    ref: int
    statuses: dict[str, str]  # task id -> status ("unknown" for ids never seen)


@message("query_progress")
@dataclass(slots=True)
class QueryProgress(Message):
    ref: int
    task_id: str


@message("progress_reply")
@dataclass(slots=True)
class ProgressReply(Message):
    ref: int
    task_id: str
    progress: dict[str, Any] | None


@message("query_stats")
@dataclass(slots=True)
class QueryStats(Message):
    ref: int


@message("stats_reply")
@dataclass(slots=True)
class StatsReply(Message):
    ref: int
    stats: dict[str, Any]


@message("query_tasks")
@dataclass(slots=True)
class QueryTasks(Message):
    """facade -> scheduler: the tasks it knows (``status`` one of ``STATUSES``
    or None for all); answered with ``TasksReply``. With ``metrics`` the
    scheduler answers with its metric figures instead (``llmspell._metrics``)."""

    ref: int
    status: str | None = None
    metrics: bool = False


@message("tasks_reply")
@dataclass(slots=True)
class TasksReply(Message):
    """scheduler -> facade: one ``[id, kind, status, attempts, created, ended]``
    per task (``ended`` None while unfinished), oldest first; or, for a
    metrics query, the figures in ``metrics``."""

    ref: int
    tasks: list[list[Any]]
    metrics: dict[str, Any] | None = None


# -- traces -----------------------------------------------------------------


@message("trace_to")
@dataclass(slots=True)
class TraceTo(Message):
    """facade -> scheduler: send the span records of the tasks this facade
    submits (and of their children) to me (``on``), or stop (not ``on``).
    Answered with ``Ack(ref)``."""

    ref: int
    on: bool = True


@message("span_records")
@dataclass(slots=True)
class SpanRecords(Message):
    """scheduler -> tracing facade: task span records, in order; ``seq``
    numbers the batches (0, 1, ...) so the facade can put batches that overtook
    each other back in order. One record per task: ``["span", task id, kind,
    name, parent task id, traceparent, submitted, status, ended, attempts,
    error dict, events, child spans]`` when it ends; a task that submits
    children gets ``["open", task id, kind, name, parent task id, traceparent,
    submitted]`` when its first child comes (so the child's span can name it
    as parent) and ``["close", task id, status, ended, attempts, error dict,
    events, child spans]`` when it ends. An event is ``[name, time,
    attributes]``, a child span (a model request) ``[name, start, end,
    attributes, error message]``. (Checked by the facade, not the codec: a
    list of lists costs the codec a pass per record.)"""

    seq: int
    items: Any


# -- events -----------------------------------------------------------------


@message("publish")
@dataclass(slots=True)
class Publish(Message):
    """anyone -> event bus: publish an event."""

    name: str
    payload: Any = None
    time: float = 0.0


@message("publish_batch")
@dataclass(slots=True)
class PublishBatch(Message):
    """anyone -> event bus: several events in one message (in order)."""

    items: list[Publish]


@message("subscribe")
@dataclass(slots=True)
class Subscribe(Message):
    """subscriber -> event bus: deliver events matching ``pattern`` (a glob)."""

    sub_id: str
    pattern: str
    limit: int = 1000  # queue bound; oldest dropped past it
    once: bool = False  # end the subscription after the first event


@message("unsubscribe")
@dataclass(slots=True)
class Unsubscribe(Message):
    sub_id: str


@message("event_delivery")
@dataclass(slots=True)
class EventDelivery(Message):
    """event bus -> subscriber: events, each ``{"name", "payload", "time"}``."""

    sub_id: str
    events: list[dict[str, Any]]
    dropped: int = 0


# -- coordination -----------------------------------------------------------


@message("coordinate")
@dataclass(slots=True)
class Coordinate(Message):
    """facade/engine -> coordinator: run ``tasks`` under ``strategy``."""

    coord_id: str
    tasks: list[TaskSpec]
    strategy: str
    timeout: float | None = None
    inputs: list[Any] | None = None
    # a run resumed from a journal: its tasks may be known already (see SubmitTasks)
    replayed: bool = False


@message("coordination_done")
@dataclass(slots=True)
class CoordinationDone(Message):
    """aggregator -> requester: the CoordinationResult as a dict."""

    coord_id: str
    result: dict[str, Any]


@message("start_aggregation")
@dataclass(slots=True)
class StartAggregation(Message):
    """coordinator -> aggregator (its child): run ``tasks`` under ``strategy``,
    submitting them to ``scheduler``, and answer ``requester`` with
    ``CoordinationDone``; publish hook events on ``events``."""

    coord_id: str
    requester: Address
    scheduler: Address
    tasks: list[TaskSpec]
    strategy: str
    timeout: float | None = None
    inputs: list[Any] | None = None
    events: Address | None = None
    replayed: bool = False  # submit with SubmitTasks(replayed=True)


@message("stop_aggregation")
@dataclass(slots=True)
class StopAggregation(Message):
    """coordinator -> aggregator: cancel what is left and end without an answer
    (the workflow task it runs was cancelled or timed out)."""

    coord_id: str
    reason: str


@message("aggregation_ended")
@dataclass(slots=True)
class AggregationEnded(Message):
    """aggregator -> coordinator: answered (or stopped), none of my tasks is
    left unfinished; the coordinator then stops the aggregator."""

    coord_id: str


# -- engines, supervision, set-up -------------------------------------------


@message("engine_ready")
@dataclass(slots=True)
class EngineReady(Message):
    """engine -> scheduler: I serve ``engine`` tasks, up to ``capacity`` at once."""

    engine: str
    index: int
    pid: int
    capacity: int
    restarts: int = 0
    # cluster mode: the member that runs this engine, its address and its tags
    member: str = ""
    host: str = ""
    tags: list[str] | None = None


@message("engine_event")
@dataclass(slots=True)
class EngineEvent(Message):
    """supervisor -> director/scheduler: an engine crashed or restarted."""

    engine: str
    index: int
    what: str  # "crash" | "stop" | "restart" | "lost"
    detail: str = ""
    # the engine process it is about (0: not known, it died before it told its
    # pid): a replacement may have registered before this reaches the scheduler
    pid: int = 0


@message("introduce")
@dataclass(slots=True)
class Introduce(Message):
    """director -> actor: the addresses and configuration it works with."""

    runtime_id: str
    addresses: dict[str, Address]
    config: dict[str, Any] = field(default_factory=dict)


@message("hello")
@dataclass(slots=True)
class Hello(Message):
    """facade -> director: give me the addresses of the runtime's actors;
    the director replies with ``Introduce``."""

    client: str = ""


@message("attached")
@dataclass(slots=True)
class Attached(Message):
    """director -> the facade that owns a local runtime: ``client`` attached
    (``Hello``). The owner remembers it: should the director's process die,
    the director it makes in its place is told every client, and tells each
    its address (``Replaced``)."""

    client: Address


@message("shutdown")
@dataclass(slots=True)
class Shutdown(Message):
    """facade -> director: stop everything (cancel what runs, stop the
    children one at a time, the last started first), director -> engines'
    supervisor: stop your children so. The one asked answers with a
    ``Shutdown`` once its children exited."""

    reason: str = "runtime closed"


@message("via")
@dataclass(slots=True)
class Via(Message):
    """client -> actor: handle the encoded message ``data`` as if it came from
    ``reply_to`` (answers and task outcomes go there). ``local`` mode uses it:
    callers send from one endpoint and the driver listens on another."""

    reply_to: Address
    data: bytes


@message("lane_ask")
@dataclass(slots=True)
class LaneAsk(Message):
    """engine/facade -> scheduler (local mode): offer me a lane (``_lanes``)."""


@message("lane_offer")
@dataclass(slots=True)
class LaneOffer(Message):
    """scheduler -> engine/facade: connect to the abstract Unix socket ``name`` and
    write ``token`` as the first frame."""

    name: bytes
    token: bytes


@message("lane_mark")
@dataclass(slots=True)
class LaneMark(Message):
    """either side of a lane, through Thespian: everything I sent you before this
    came through Thespian, everything after comes through the lane ``token``."""

    token: bytes


@message("supervisor_event")
@dataclass(slots=True)
class SupervisorEvent(Message):
    """supervisor -> its parent: a child crashed, was restarted, or the
    supervisor gave up (``what`` = "crash", "restart" or "escalate")."""

    supervisor: str
    child: str
    what: str
    detail: str = ""
    restarts: int = 0


@message("request_stop")
@dataclass(slots=True)
class RequestStop(Message):
    """client -> scheduler: ask the process serving this runtime to shut it
    down (``llmspell stop``); it sees ``stats()["stop_requested"]``."""

    reason: str = "stop requested"


@message("ping")
@dataclass(slots=True)
class Ping(Message):
    """parent -> new child: answer with ``Pong`` (its sender is your address)."""

    role: str


@message("pong")
@dataclass(slots=True)
class Pong(Message):
    role: str
    pid: int = 0  # the answering actor's process (local mode: its supervisor watches it)


@message("replaced")
@dataclass(slots=True)
class Replaced(Message):
    """director -> the runtime's actors and facades (the engines' supervisor
    passes it on to its engines): the process of ``role`` (pid ``pid``) died
    and its replacement runs at ``address``. ``journaled``: the runtime has a
    journal, so a new scheduler resumes what the dead one held."""

    role: str
    address: Address
    pid: int = 0
    journaled: bool = False
    new_pid: int = 0  # the replacement's process

    @property
    def crashed(self) -> str:
        """What to tell whoever lost work with it."""
        return f"the {_ROLE_NAMES.get(self.role, self.role)} process (pid {self.pid}) crashed"


_ROLE_NAMES = {
    "events": "event bus",
    "resources": "resource tracker",
    "supervisor": "engines' supervisor",
}


@message("crash_engine")
@dataclass(slots=True)
class CrashEngine(Message):
    """fault injection -> scheduler -> engine: the engine actor exits at once,
    as if its process died (tests and simulations)."""

    engine: str
    index: int = 0


@message("inject_faults")
@dataclass(slots=True)
class InjectFaults(Message):
    """simulation -> scheduler and event bus: faults to apply (see
    ``llmspell.testing.Fault``); each actor takes the kinds it handles."""

    faults: list[dict[str, Any]]


# -- registrations, streams, resources ----------------------------------------


@message("register")
@dataclass(slots=True)
class Register(Message):
    """facade -> scheduler: register a tool, agent, hook or executor
    (``what``); ``name`` is the tool/agent name, hook point or executor kind;
    ``target`` says what runs (``{"lang": "python", "target": "m:f"}``,
    ``{"lang": "lua", "code": ..., "args": ...}`` (or "js"), an agent factory, a
    tool's ``schema``). The scheduler answers ``Registered``."""

    ref: int
    what: str
    name: str
    target: dict[str, Any]


@message("registered")
@dataclass(slots=True)
class Registered(Message):
    """scheduler -> registrant: the registration is in place (``error`` None) or refused."""

    ref: int
    error: str | None = None


@message("stream_chunks")
@dataclass(slots=True)
class StreamChunks(Message):
    """engine -> scheduler -> consumer: chunks of a streaming agent task;
    ``seq`` is the number of the first one (0-based) in run ``attempt`` of
    the task (a re-run after a crash numbers its chunks from 0 again)."""

    task_id: str
    seq: int
    chunks: list[Any]
    attempt: int = 0


@message("stream_ack")
@dataclass(slots=True)
class StreamAck(Message):
    """consumer -> scheduler -> engine: the chunks before number ``seq`` were
    taken; the producer may run up to ``seq + buffer_size`` chunks."""

    task_id: str
    seq: int


@message("resource_wait")
@dataclass(slots=True)
class ResourceWait(Message):
    """engine -> resource tracker: task ``task_id`` waits for permission to
    go on: parked over its ``Limits`` (``resource`` "cpu_seconds" or
    "memory_bytes", ``on_exceed="throttle"``) or asking on its own
    (``resource`` "requested", ``spell.resource_wait``). ``step`` is the CPU
    time of its last step, ``waits`` how many times in a row it asked. The
    tracker answers ``ResourceGrant``."""

    task_id: str
    attempt: int
    engine: str
    index: int
    resource: str
    used: float = 0.0
    limit: float = 0.0
    step: float = 0.0
    waits: int = 0


@message("resource_grant")
@dataclass(slots=True)
class ResourceGrant(Message):
    """resource tracker -> engine: task ``task_id`` may go on (echoes ``resource``)."""

    task_id: str
    attempt: int
    resource: str


@message("engine_load")
@dataclass(slots=True)
class EngineLoad(Message):
    """resource tracker -> scheduler: engine process ``engine``/``index`` is
    over (``over``) or back under the runtime's ``engine_memory``; over it,
    the engine gets no new tasks."""

    engine: str
    index: int
    over: bool
    rss: int = 0


@message("engine_usage")
@dataclass(slots=True)
class EngineUsage(Message):
    """engine on a cluster member -> resource tracker: its own process
    (``pid`` on ``host``) measured there (the leader cannot sample a process
    of another machine): resident memory and CPU % since its last report."""

    engine: str
    index: int
    pid: int
    rss: int
    cpu_percent: float
    host: str = ""


@message("event_interest")
@dataclass(slots=True)
class EventInterest(Message):
    """event bus -> scheduler: patterns someone subscribed to (``added``) or no
    longer does (``removed``). The scheduler publishes its own lifecycle
    events only when some pattern wants them."""

    added: list[str]
    removed: list[str]
    ref: int = 0  # facade -> scheduler: answer with Ack(ref) once applied


@message("ack")
@dataclass(slots=True)
class Ack(Message):
    """An answer that says only "done" (to a request carrying ``ref``)."""

    ref: int


@message("_tick")
@dataclass(slots=True)
class Tick(Message):
    """actor -> itself: go on with the next quantum of work."""

    seq: int = 0


@message("_poll")
@dataclass(slots=True)
class Poll(Message):
    """doorbell -> engine: results from worker threads are waiting."""

    pass
