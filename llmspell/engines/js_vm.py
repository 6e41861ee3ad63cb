"""JsVM: JavaScript script tasks as promises in one shared QuickJS context.

The contract is ``_vm.py``; what JavaScript adds:

* Code is the body of ``async function (spell) {...}``, called with ``this`` =
  ``globalThis`` (as a script's top level) and compiled once per code string
  (cached): the strict script that compiles it is first run in a scratch
  context (code escaping the function by unbalanced braces or by comments is
  refused there), then in the shared one, where it is one function expression
  and keeps nothing in the context once the cache forgets it. ``return`` is
  the result, a throw or rejection the failure. The first ``resume`` calls the
  function.
* One context for all tasks: every built-in, ``globalThis`` and the ``spell``
  prototype are frozen, ``eval`` and the function constructors (``Function``,
  async, generator) throw ``EvalError``, values cross as copies, so tasks
  share no object. Assigning a name a frozen built-in has defines an own
  property on the receiver (``p.then = f``; the "override mistake" is
  avoided); assigning it on the built-in itself throws. See
  ``docs/security.md``. The host holds each task's JS record and passes it back
  on every call (no lookup by id in JS). A step drains the job queue to
  empty, so every job run in a step is the stepped task's: ``spell``, timers
  and ``console`` find their task in a "current task" variable, and a step can
  never advance another task (``drain_other_results`` only reports tasks lost
  when a context is rebuilt).
* Waiting calls return Promises and become ``Request``s with VM-unique ids
  (one exception: a lone ``sleep(0)``/``yield`` made while the task waits on
  nothing else uses the task's own negative id, and its ``Yielded`` is built
  once per task and reused: the hot path of ``await spell.sleep(0)``); a
  task may have several outstanding (``Promise.all``): ``Yielded(first, more)``,
  then ``Waiting()`` while it waits on earlier ones. Answer each with
  ``resume(..., request_id=id)`` (0 = its only one). Answers to unknown ids are
  ignored; a finished task's requests are abandoned; resuming a forgotten task
  raises ``KeyError``. A task with no outstanding request and an unsettled body
  fails ("deadlock").
* The binding refuses calls into Python while a time limit is set, so JS never
  calls Python: ``spell.emit/progress/log/submit`` are queued and performed in
  order after the step. ``spell.submit`` thus returns an opaque handle
  ``"<parent id>/<n>"`` that ``spell.await`` maps to the child's id; a spec the
  host rejects fails that await (and logs a warning).
* ``setTimeout``/``setInterval`` are ``sleep`` requests (nothing busy-waits),
  ``queueMicrotask`` a job, ``console.*`` ``host.log``. Errors thrown by those
  callbacks and a rejected ``spell`` promise nothing listened to are logged as
  warnings; the script's own unhandled rejections are not seen (no tracker in
  the binding). Once the body settles, pending timers never fire.
* Values (msgpack data, as JSON): undefined/null -> None; integral numbers
  below 2**63 -> int (exact), other numbers -> float; NaN/Infinity <-> float
  nan/inf; BigInt within 64 bits -> int; Uint8Array/ArrayBuffer <-> bytes;
  arrays <-> list; plain objects and class instances <-> dict; ``toJSON`` is
  used (Date -> ISO string). Functions, symbols, cycles, wider BigInts,
  Map/Set/Promise/RegExp/Error and other typed arrays fail naming the path:
  ``result.items[3]: cannot convert a function`` (``kind="conversion"``).
* Limits are per VM (one QuickJS runtime): memory (a task hitting it fails
  ``"memory"``; a waiting task's memory counts against all) and stack. The step
  budget is enforced by QuickJS's interrupt (process CPU clock, per job) and,
  for endless microtask chains, by the drain loop (wall clock): ``"budget"``;
  the task's leftover jobs are interrupted and the VM goes on. A context whose
  leftovers cannot be stopped is rebuilt and its tasks fail. ``clock`` replaces
  the drain loop's wall clock and the one of ``cpu_seconds`` (a simulation
  passes one that counts its reads); QuickJS's own interrupt keeps its clock.

Measured on this 2-core VM (noisy; QuickJS 2021, re-measured on QuickJS-ng in
bench/README.md: 2.9 KiB per pending task, boot ~8 ms with the lockdown's
accessors), 10,000 tasks awaiting ``spell.sleep(0)``: one shared context holds
3.1-3.2 KiB (malloc) per pending task against 1.65 KiB for a bare pending async
function, starts a task in ~5 us (compile cached) and boots in ~9 ms. A Context
per task would take ~310 us and ~75 KiB each before any prelude, with no sharing
of compiled code or the frozen realm: one shared context it is. A sleep(0) step
costs ~8-10 us against ~4 us for a hand-written loop resolving bare promises
(``bench/js.py``). Its floor is the binding: a step is four calls into QuickJS
(resolve, run the job, find the queue empty, collect), and the two that run jobs
need the time limit, for which the binding reads the process CPU clock (a ~1.2
us system call here); the Python around them is ~1.5 us. A batched
``resume_many`` (resolve many, drain once) measured no faster, and it would run
one task's jobs in another's step, so there is none.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import quickjs

from llmspell._task import lone_surrogate
from llmspell.engines._vm import Completed, Failed, Host, Request, StepResult, Waiting, Yielded

__all__ = ["JsVM"]

_log = logging.getLogger("llmspell.engines.js")
_clock = time.perf_counter
_TAG = "\x00"
_MiB = 1 << 20
_EXPORTS = ("start", "run", "resume", "collect", "count", "kill", "take", "record_clock")
# QuickJS-ng frames: "    at name (<input>:line:column)"; "(native)" for built-ins
_FRAME = re.compile(r"^\s*at (\S+|<anonymous>) \((<input>|native)(?::(\d+))?(?::\d+)?\)\s*$")
_POS = re.compile(r"\s+at <input>:(\d+)(?::\d+)?\s*$", re.M)
_HEAD, _TAIL, _OFFSET = "async function (spell) {\n", "\n}", 1  # user line = JS line - 1

_PRELUDE = r"""
(function () {
"use strict";
const G = globalThis, O = Object, TAG = "\u0000", {freeze, keys, getPrototypeOf,
  getOwnPropertyNames, getOwnPropertySymbols, getOwnPropertyDescriptor, defineProperty} = O;
const hasOwn = O.prototype.hasOwnProperty, stringify = JSON.stringify, parse = JSON.parse;
const isArray = Array.isArray, isView = ArrayBuffer.isView, fromCharCode = String.fromCharCode;
const ObjProto = O.prototype, ErrorC = Error, IErr = InternalError, PromiseC = Promise, MapC = Map;
const U8 = Uint8Array, AB = ArrayBuffer, EXOTIC = [Map, Set, WeakMap, WeakSet, Promise, RegExp];
const NONE = [null, null], I64 = 9223372036854775808;
let cur = null, nextId = 2, compiled = null, busy = null, R = null, J = null;
const imul = Math.imul, mathRandom = Math.random, DateC = Date, dateNow = Date.now;

class ConvFail { constructor(path, msg) { this.path = path.slice(); this.msg = msg; } }
function ls$path(root, path) {
  for (const k of path) root += typeof k === "number" ? "[" + k + "]"
    : /^[A-Za-z_$][\w$]*$/.test(k) ? "." + k : "[" + stringify(k) + "]";
  return root;
}
function ls$latin1(u) {
  let s = "";
  for (let i = 0; i < u.length; i += 8192) s += fromCharCode.apply(null, u.subarray(i, i + 8192));
  return s;
}
function ls$w(v, path, seen) {  // JS value -> JSON-able tree, specials tagged {"\0": [tag, x]}
  switch (typeof v) {
    case "string": case "boolean": return v;
    case "number":
      if (v <= 9007199254740991 && v >= -9007199254740991) return v;
      if (v - v !== 0) return {[TAG]: ["f", v !== v ? "nan" : v > 0 ? "inf" : "-inf"]};
      return {[TAG]: v >= I64 || v < -I64 ? ["f", String(v)] : ["i", String(BigInt(v))]};
    case "undefined": return null;
    case "bigint":
      if (v < -(2n ** 63n) || v >= 2n ** 64n) throw new ConvFail(path, "cannot convert a BigInt "
        + "wider than 64 bits");
      return {[TAG]: ["i", String(v)]};
    case "function": case "symbol": throw new ConvFail(path, "cannot convert a " + typeof v);
  }
  if (v === null) return null;
  if (seen.indexOf(v) >= 0) throw new ConvFail(path, "cannot convert a cycle (it contains itself)");
  if (v instanceof U8 || v instanceof AB) return {[TAG]: ["b", ls$latin1(new U8(v))]};
  seen.push(v);
  let r;
  if (isArray(v)) {
    r = new Array(v.length);
    for (let i = 0; i < v.length; i++) { path.push(i); r[i] = ls$w(v[i], path, seen); path.pop(); }
  } else if (typeof v.toJSON === "function") {
    r = ls$w(v.toJSON(), path, seen);
  } else {
    const proto = getPrototypeOf(v);
    if (proto !== ObjProto && proto !== null
        && (isView(v) || v instanceof ErrorC || EXOTIC.some((c) => v instanceof c))) {
      const c = v.constructor, name = c && typeof c.name === "string" ? c.name : "object";
      throw new ConvFail(path, "cannot convert " + (/^[AEIOU]/.test(name) ? "an " : "a ") + name);
    }
    let pairs = null;
    r = {};
    for (const k of keys(v)) {
      path.push(k);
      const x = ls$w(v[k], path, seen);
      path.pop();
      if (pairs === null && (k === "__proto__" || k.charCodeAt(0) === 0)) {
        pairs = keys(r).map((kk) => [kk, r[kk]]);
      }
      if (pairs === null) r[k] = x; else pairs.push([k, x]);
    }
    if (pairs !== null) r = {[TAG]: ["o", pairs]};
  }
  seen.pop();
  return r;
}
function ls$wire(v, root) {  // -> JSON text; errors name the path
  const path = [];
  try { return stringify(ls$w(v, path, [])); } catch (e) {
    if (e instanceof ConvFail) throw new TypeError(ls$path(root, e.path) + ": " + e.msg);
    throw new TypeError(ls$path(root, path) + ": " + ls$show(e));
  }
}
function ls$rev(k, v) {
  if (v === null || typeof v !== "object" || isArray(v) || !hasOwn.call(v, TAG)) return v;
  const tag = v[TAG][0], p = v[TAG][1];
  if (tag === "f") return p === "nan" ? NaN : p === "inf" ? Infinity : -Infinity;
  if (tag === "b") {
    const u = new U8(p.length);
    for (let i = 0; i < p.length; i++) u[i] = p.charCodeAt(i);
    return u;
  }
  const o = {};
  for (const [kk, x] of p) {
    defineProperty(o, kk, {value: x, writable: true, enumerable: true, configurable: true});
  }
  return o;
}
function ls$in(kind, v) { return kind === 0 ? v : kind === 1 ? parse(v) : parse(v, ls$rev); }
function ls$show(x) {
  if (typeof x === "string") return x;
  if (typeof x === "number" || typeof x === "bigint") return String(x);  // NaN, not null
  if (x instanceof ErrorC) return String(x);
  try { const s = stringify(x); if (s !== undefined) return s; } catch (e) { /* below */ }
  try { return String(x); } catch (e) { return "(a value that cannot be shown)"; }
}

// cur is the task being stepped: every job run in a step is its job. A task's
// outstanding requests: the first inline (rid, res, rej), others in t.more
// (id -> [res, rej]); a timer's entry is (timer, null). Its output for the step:
// t.fast, a lone sleep(0) (< 0) or yield (> 0): +-1 when the task waits on nothing
// else, so it uses its own id t.fid (the host reuses one Request for it), else
// +-id (ids start at 2); else t.out, entries (fields "\x1f"-separated) joined by "\x1e".
function ls$task(what) {
  if (cur === null) throw new Error(what + ": not inside a running task");
  if (cur.done) throw new Error(what + ": this task has already finished");
  return cur;
}
function ls$exec(res, rej) { R = res; J = rej; }
function ls$put(t, s) {
  if (t.fast !== 0) { const f = t.fast; t.fast = 0; ls$put(t, ls$fastText(t, f)); }
  if (t.out === null) t.out = [s]; else t.out.push(s);
}
function ls$fastText(t, f) {
  const id = f === 1 || f === -1 ? t.fid : f > 0 ? f : -f;
  return f > 0 ? "Y\x1f" + id : "S\x1f" + id + "\x1f0";
}
function ls$hold(t, id, res, rej) {
  if (t.rid === 0) { t.rid = id; t.res = res; t.rej = rej; }
  else (t.more || (t.more = new MapC())).set(id, [res, rej]);
}
function ls$count(t) { return t.done ? 0 : (t.rid !== 0) + (t.more === null ? 0 : t.more.size); }
function ls$req(t, entry, extra) {  // a waiting call: entry + id + extra, or t.fast
  const p = new PromiseC(ls$exec);
  if (entry === null && t.out === null && t.fast === 0) {
    if (t.rid === 0 && (t.more === null || t.more.size === 0)) {
      t.rid = t.fid; t.res = R; t.rej = J; t.fast = extra;
    } else {
      const id = nextId++;
      ls$hold(t, id, R, J);
      t.fast = extra * id;
    }
    return p;
  }
  const id = nextId++;
  ls$hold(t, id, R, J);
  if (entry !== null) ls$put(t, entry + id + extra);
  else ls$put(t, ls$fastText(t, extra * id));
  return p;
}
function ls$secs(s, what) {
  const n = Number(s);
  if (n !== n) throw new TypeError(what + ": expected a number of seconds, got " + ls$show(s));
  return n > 0 ? n : 0;
}
function ls$sub(t, spec) {
  if (spec === null || typeof spec !== "object" || isArray(spec)) {
    throw new TypeError("spell.submit: the spec must be an object like {lang: 'js', code: '...'}");
  }
  const w = ls$wire(spec, "spell.submit spec"), h = t.spell.task_id + "/" + nextId++;
  ls$put(t, "s\x1f" + stringify(h) + "\x1f" + w);
  return h;
}
function ls$aw(t, h) {
  if (typeof h !== "string") throw new TypeError("spell.await: not a handle: " + ls$show(h));
  return ls$req(t, "A\x1f", "\x1f" + stringify(h));
}
function ls$str(x, what) { if (typeof x !== "string") throw new TypeError(what + " isn't a str"); }
function ls$log(t, level, message) { ls$put(t, "l\x1f" + stringify([String(level), message])); }
const SP = {
  submit: function ls$submit(spec) { return ls$sub(ls$task("spell.submit"), spec); },
  await: function ls$await(h) { return ls$aw(ls$task("spell.await"), h); },
  run: function ls$run(spec) { const t = ls$task("spell.run"); return ls$aw(t, ls$sub(t, spec)); },
  tool: function ls$tool(name, params) { return SP.run({tool: name, params}); },
  agent: function ls$agent(name, input) { return SP.run({agent: name, input}); },
  sleep: function ls$sleep(s) {
    const t = ls$task("spell.sleep");
    if (s === 0) return ls$req(t, null, -1);
    if (typeof s !== "number" || !(s >= 0 && s < Infinity)) {
      throw new TypeError("spell.sleep: expected a number of seconds >= 0, got " + ls$show(s));
    }
    return ls$req(t, "S\x1f", "\x1f" + s);
  },
  yield: function ls$yield() { return ls$req(ls$task("spell.yield"), null, 1); },
  resource_wait: function ls$resource_wait() {
    return ls$req(ls$task("spell.resource_wait"), "R\x1fresource_wait\x1f", "\x1f{}");
  },
  wait_event: function ls$wait_event(pattern, timeout) {
    const t = ls$task("spell.wait_event");
    ls$str(pattern, "spell.wait_event: the pattern");
    const s = timeout == null ? null : ls$secs(timeout, "spell.wait_event");
    return ls$req(t, "R\x1fwait_event\x1f", "\x1f" + stringify({pattern, timeout: s}));
  },
  coordinate: function ls$coordinate(list, strategy, opts) {
    const t = ls$task("spell.coordinate"), o = opts == null ? {} : opts;
    if (!isArray(list)) throw new TypeError("spell.coordinate: expected an array of task specs");
    return ls$req(t, "R\x1fcoordinate\x1f", "\x1f{\"tasks\":"
      + ls$wire(list, "spell.coordinate tasks") + ",\"strategy\":" + stringify(String(strategy))
      + ",\"timeout\":" + (o.timeout == null ? "null" : ls$secs(o.timeout, "spell.coordinate"))
      + ",\"inputs\":" + (o.inputs == null ? "null" : ls$wire(o.inputs, "spell.coordinate inputs"))
      + "}");
  },
  emit: function ls$emit(name, payload) {
    const t = ls$task("spell.emit");
    ls$str(name, "spell.emit: the event name");
    ls$put(t, "e\x1f" + stringify(name) + "\x1f" + ls$wire(payload, "spell.emit payload"));
  },
  progress: function ls$progress(done, total, message) {
    const t = ls$task("spell.progress");
    if (typeof done !== "number") throw new TypeError("spell.progress: done must be a number");
    if (total != null && typeof total !== "number") {
      throw new TypeError("spell.progress: total must be a number or null");
    }
    ls$put(t, "p\x1f" + stringify([done, total == null ? null : total,
      message == null ? null : String(message)]));
  },
  log: function ls$logm(level, message) { ls$log(ls$task("spell.log"), level, ls$show(message)); },
};

function ls$arm(t, timer) {
  const id = nextId++;
  timer.rid = id;
  ls$hold(t, id, timer, null);
  ls$put(t, "S\x1f" + id + "\x1f" + timer.secs);
}
function ls$timer(cb, ms, args, repeat) {
  const what = repeat ? "setInterval" : "setTimeout", t = ls$task(what);
  if (typeof cb !== "function") throw new TypeError(what + ": the callback must be a function");
  const secs = ls$secs(ms === undefined ? 0 : ms, what) / 1000;
  const timer = {cb, args, repeat, secs, rid: 0, id: nextId};
  ls$arm(t, timer);
  (t.timers || (t.timers = new MapC())).set(timer.id, timer);
  return timer.id;
}
function ls$call(t, f, args, what) {  // a callback: report its errors; busy marks an interrupt
  busy = f;
  try { f.apply(undefined, args); } catch (e) {
    if (!t.done) ls$log(t, "warning", "uncaught exception in a " + what + ": " + ls$show(e));
  }
  busy = null;
}
function ls$fire(timer) {
  const t = cur;
  if (t === null || t.done || !t.timers || t.timers.get(timer.id) !== timer) return;
  if (timer.repeat) ls$arm(t, timer); else t.timers.delete(timer.id);
  ls$call(t, timer.cb, timer.args, "timer callback");
}
function ls$clear(id) {
  const t = cur, timer = t === null || t.done || !t.timers ? undefined : t.timers.get(id);
  if (timer === undefined) return;
  t.timers.delete(id);
  if (t.rid === timer.rid) t.rid = 0; else if (t.more) t.more.delete(timer.rid);
  const i = t.out === null ? -1 : t.out.indexOf("S\x1f" + timer.rid + "\x1f" + timer.secs);
  if (i >= 0) t.out.splice(i, 1);  // asked for in this very step: never tell the host
}
function ls$micro(f) { if (cur !== null) ls$call(cur, f[0], [], "queueMicrotask callback"); }
function ls$console(level) {
  return function ls$console(...a) { ls$log(ls$task("console"), level, a.map(ls$show).join(" ")); };
}
const globals = {
  setTimeout: function ls$setTimeout(cb, ms, ...args) { return ls$timer(cb, ms, args, false); },
  setInterval: function ls$setInterval(cb, ms, ...args) { return ls$timer(cb, ms, args, true); },
  clearTimeout: function ls$clearTimeout(id) { ls$clear(id); },
  clearInterval: function ls$clearInterval(id) { ls$clear(id); },
  queueMicrotask: function ls$queueMicrotask(cb) {
    ls$task("queueMicrotask");
    if (typeof cb !== "function") throw new TypeError("queueMicrotask: expected a function");
    PromiseC.resolve([cb]).then(ls$micro);
  },
  console: {log: ls$console("info"), info: ls$console("info"), debug: ls$console("debug"),
    warn: ls$console("warning"), error: ls$console("error")},
};

function ls$end(t) { t.done = true; t.res = t.rej = t.more = t.timers = null; }
function ls$ok(v) {
  const t = cur;
  if (t === null || t.done) return;
  let w;
  try { w = "d\x1f" + ls$wire(v, "result"); } catch (e) {
    w = "f\x1f" + stringify(["conversion", e instanceof ErrorC ? e.message : ls$show(e), ""]);
  }
  ls$end(t);
  ls$put(t, w);
}
function ls$throwSite(e, stack) {  // without the frames of e's own constructors
  const names = new Set();
  for (let p = getPrototypeOf(e); p !== null && p !== ErrorC.prototype; p = getPrototypeOf(p)) {
    const d = getOwnPropertyDescriptor(p, "constructor");
    if (d !== undefined && typeof d.value === "function") names.add(d.value.name);
  }
  const lines = stack.split("\n");
  let i = 0;
  while (i < lines.length && names.has((/^\s*at (\S+) \(/.exec(lines[i]) || NONE)[1])) i++;
  return i === 0 ? stack : lines.slice(i).join("\n");
}
function ls$fail(e) {
  const t = cur;
  if (t === null || t.done) return;
  ls$end(t);
  let kind = "runtime", msg, stack = "", data = null;
  try {
    if (e instanceof ErrorC) {
      msg = String(e);
      if (typeof e.stack === "string") stack = ls$throwSite(e, e.stack);
      if (e instanceof IErr && e.message === "interrupted") kind = "budget";
      if (e instanceof IErr && e.message === "out of memory") kind = "memory";
    } else {
      msg = "uncaught " + ls$show(e);
      if (e != null) {
        try { data = ls$wire(e, "error"); } catch (e3) { /* not data: the message only */ }
      }
    }
  } catch (e2) { msg = "uncaught exception (it could not be shown)"; }
  ls$put(t, "f\x1f" + stringify([kind, msg, stack, data]));
}
// Math.random is per task: each task has its own generator, seeded from its task id, so
// a task that runs again (a retry, a replay) draws the same numbers. The generator is
// Baagoe's Alea (floating point only: QuickJS runs it ~3x faster than 32-bit integer
// generators, whose sums overflow to doubles), two steps per number for 53 bits.
function ls$seed(id) {  // [s0, s1, s2, c] from four FNV-1a-like hashes of the id
  let a = 0x811c9dc5 | 0, b = 0x9e3779b9 | 0, c = 0x6a09e667 | 0;
  for (let i = 0; i < id.length; i++) {
    const x = id.charCodeAt(i);
    a = imul(a ^ x, 0x01000193); b = imul(b ^ x, 0x85ebca6b); c = imul(c ^ x, 0xc2b2ae35);
  }
  return [((a >>> 0) + 0.5) / 4294967296, ((b >>> 0) + 0.5) / 4294967296,
    ((c >>> 0) + 0.5) / 4294967296, 1];
}
// the generator of the task that called last (ro), held in variables: most calls come
// from the same task; it goes back to its record (t.rng) when another task calls
let ro = null, ra = 0, rb = 0, rc = 0, rd = 0;
function ls$rswitch(t) {
  if (ro !== null) { const s = ro.rng; s[0] = ra; s[1] = rb; s[2] = rc; s[3] = rd; }
  ro = t;
  const s = t.rng === null ? (t.rng = ls$seed(t.tid)) : t.rng;
  ra = s[0]; rb = s[1]; rc = s[2]; rd = s[3];
}
defineProperty(Math, "random", {value: {random() {
  if (cur !== ro) {
    if (cur === null) return mathRandom();
    ls$rswitch(cur);
  }
  let t = 2091639 * ra + rd * 2.3283064365386963e-10;
  ra = rb; rb = rc; rc = t - (rd = t | 0);
  const hi = rc;
  t = 2091639 * ra + rd * 2.3283064365386963e-10;
  ra = rb; rb = rc; rc = t - (rd = t | 0);
  const r = hi + ((rc * 2097152) | 0) * 1.1102230246251565e-16;
  return r < 1 ? r : hi;
}}.random, writable: true, configurable: true});
// With a journal (record_clock), Date.now(), new Date() and Date() are clock reads the host
// records ("T" entries); a replayed task reads its recorded values first (t.times).
function ls$now(what) {
  const t = cur;
  if (t === null || t.done) return dateNow();
  const v = t.times !== null && t.ti < t.times.length ? t.times[t.ti++] : dateNow();
  ls$put(t, "T\x1f" + what + "\x1f" + stringify(v));
  return v;
}
function ls$recordClock() {
  const D = function Date(...a) {
    if (new.target === undefined) return String(new DateC(ls$now("Date()")));
    return Reflect.construct(DateC, a.length === 0 ? [ls$now("new Date()")] : a, new.target);
  };
  defineProperty(D, "prototype", {value: DateC.prototype, writable: false});
  defineProperty(D, "length", {value: 7});
  defineProperty(D, "now", {value: {now() { return ls$now("Date.now"); }}.now, writable: true,
    configurable: true});
  for (const k of ["parse", "UTC"]) {
    defineProperty(D, k, {value: DateC[k], writable: true, configurable: true});
  }
  defineProperty(DateC.prototype, "constructor", {value: D, writable: true, configurable: true});
  defineProperty(G, "Date", {value: D, writable: true, configurable: true});
}
const api = {
  // The host holds each task's record (t) and passes it back: no lookup per step.
  start: function ls$start(fid, tid, fn, kind, payload, times) {
    const ai = kind === 0 ? NONE : ls$in(kind, payload);
    return {fid, fn, spell: {__proto__: SP, task_id: tid, args: ai[0], input: ai[1]},
      done: false, rid: 0, res: null, rej: null, more: null, timers: null, out: null, fast: 0,
      tid, rng: null, times: times === null ? null : parse(times), ti: 0};
  },
  record_clock: function ls$record_clock() { ls$recordClock(); },
  run: function ls$runTask(t) {
    const fn = t.fn;
    cur = t;
    t.fn = null;
    fn.call(G, t.spell).then(ls$ok, ls$fail);  // top-level this: globalThis, as in a script
  },
  resume: function ls$resume(t, id, kind, v) {  // 1 settled, 0 unknown id, -1 ambiguous
    if (t.done) return 0;
    if (id === 0) {
      const n = ls$count(t);
      if (n !== 1) return n === 0 ? 0 : -1;
      id = t.rid !== 0 ? t.rid : t.more.keys().next().value;
    }
    let res, rej;
    if (t.rid === id) { res = t.res; rej = t.rej; t.rid = 0; t.res = t.rej = null; }
    else {
      const e = t.more === null ? undefined : t.more.get(id);
      if (e === undefined) return 0;
      t.more.delete(id);
      [res, rej] = e;
    }
    cur = t;
    if (rej === null) PromiseC.resolve(res).then(ls$fire);
    else if (kind === 3) rej(new Error(v));
    else res(kind === 0 ? v : ls$in(kind, v));
    return 1;
  },
  collect: function ls$collect() {
    const t = cur, b = busy;
    cur = busy = null;
    if (t === null) return 0;
    if (b !== null && !t.done) {
      ls$end(t);
      ls$put(t, "f\x1f" + stringify(["budget", "interrupted in a callback", ""]));
    }
    const o = t.out, f = t.fast;
    t.out = null;
    t.fast = 0;
    return o === null ? f : o.join("\x1e");
  },
  count: function ls$countOf(t) { return ls$count(t); },
  kill: function ls$kill(t) {
    ls$end(t);
    t.out = null;
    t.fast = 0;
    cur = null;
  },
  take: function ls$take(expected) {
    const f = compiled;
    compiled = null;
    return typeof f === "function" && String(f) === expected ? f : null;
  },
};
// Freezing the realm makes assigning an inherited name throw (JavaScript's "override
// mistake": p.then = f, Sub.resolve = f, obj.toString = f). Every writable data property of
// a frozen built-in (but of globalThis and the namespaces Math, JSON, Reflect, console, which
// nothing inherits from) becomes an accessor: reading gives the built-in, assigning defines
// an own property on the receiver, as if the built-in were writable; assigning on the
// built-in itself still throws. Costs ~25 ns a read of such a property.
function ls$shadowable(o, k, d) {
  const value = d.value, pair = {  // methods: no prototype property, no constructor
    ls$get() { return value; },
    ls$set(x) {  // as a writable data property would (OrdinarySetWithOwnDescriptor)
      if (this === o) throw new TypeError("cannot change the shared built-in property "
        + String(k));
      const r = this, own = r !== null && (typeof r === "object" || typeof r === "function")
        ? getOwnPropertyDescriptor(r, k) : undefined;
      if (own === undefined) {
        defineProperty(r, k, {value: x, writable: true, enumerable: true, configurable: true});
      } else if (own.writable) defineProperty(r, k, {value: x});
      else throw new TypeError("cannot assign to read only property '" + String(k) + "'");
    }};
  defineProperty(o, k, {enumerable: d.enumerable, configurable: true, get: pair.ls$get,
    set: pair.ls$set});
}
function ls$lockdown() {  // freeze the realm; keep assignments of inherited names working
  for (const k of keys(api)) delete G["__ls_" + k];
  delete G.__ls_lockdown;
  // eval and the four function constructors compile source at run time: each becomes a stub
  // that throws EvalError. eval's stub is no constructor, like eval; the constructors' stubs
  // keep their prototypes and their chain (AsyncFunction's prototype is Function), so
  // instanceof, typeof and getPrototypeOf answer as in the language.
  const noCode = function ls$noCode() {
    throw new EvalError("compiling code at run time (eval, Function) is not allowed");
  };
  defineProperty(G, "eval", {value: {eval(x) { return noCode(); }}.eval, writable: true,
    configurable: true});
  let FunctionStub = null;
  for (const P of [Function.prototype, getPrototypeOf(async function () {}),
    getPrototypeOf(function* () {}), getPrototypeOf(async function* () {})]) {
    const name = P.constructor.name, stub = function (body) { return noCode(); };
    defineProperty(stub, "name", {value: name});
    defineProperty(stub, "prototype", {value: P, writable: false});
    if (FunctionStub === null) FunctionStub = stub; else O.setPrototypeOf(stub, FunctionStub);
    defineProperty(P, "constructor", {value: stub, writable: true, configurable: true});
    if (P === Function.prototype) G.Function = stub;
  }
  // Error.stackTraceLimit and Error.prepareStackTrace are accessors whose setters change the
  // whole context: every task's stacks, and a prepareStackTrace function would run in other
  // tasks' steps. They become shadowable like the rest (assigning on Error throws).
  for (const k of ["stackTraceLimit", "prepareStackTrace"]) {
    const d = getOwnPropertyDescriptor(ErrorC, k);
    if (d !== undefined && d.set) ls$shadowable(ErrorC, k, {value: d.get.call(ErrorC),
      enumerable: d.enumerable});
  }
  // A cleanup callback runs as a job when the collector finds its target dead: in whatever
  // task's step that is. It is called in its own task's steps only (the language allows a
  // callback never to be called), so it cannot act as another task.
  const FR = G.FinalizationRegistry, construct = Reflect.construct;
  const FinReg = function FinalizationRegistry(cleanup) {
    if (new.target === undefined) return FR(cleanup);  // FR's own TypeError
    const owner = cur, f = typeof cleanup !== "function" ? cleanup : function (held) {
      if (cur === owner && owner !== null && !owner.done) {
        ls$call(owner, cleanup, [held], "FinalizationRegistry callback");
      }
    };
    return construct(FR, [f], new.target);
  };
  defineProperty(FinReg, "prototype", {value: FR.prototype, writable: false});
  defineProperty(FR.prototype, "constructor", {value: FinReg, writable: true, configurable: true});
  defineProperty(G, "FinalizationRegistry", {value: FinReg, writable: true, configurable: true});
  const namespaces = new Set([G, Math, JSON, Reflect, globals.console]);
  // the intrinsics that are no global's property: reached through instances
  const todo = [G, SP, async function () {}, function* () {}, async function* () {},
    (function* () {})(), (async function* () {})(), [][Symbol.iterator](), new Map().entries(),
    new Set().values(), ""[Symbol.iterator](), "a".matchAll(/a/g), [].values().map((x) => x),
    Iterator.from({next() { return {done: true}; }}), Iterator.concat()];
  const seen = new Set();
  while (todo.length) {
    const o = todo.pop();
    if (o === null || (typeof o !== "object" && typeof o !== "function") || seen.has(o)) continue;
    seen.add(o);
    for (const k of [...getOwnPropertyNames(o), ...getOwnPropertySymbols(o)]) {
      const d = getOwnPropertyDescriptor(o, k);
      if ("value" in d) {
        todo.push(d.value);
        if (d.writable && d.configurable && !namespaces.has(o)) {
          ls$shadowable(o, k, d);
          const a = getOwnPropertyDescriptor(o, k);
          todo.push(a.get, a.set);  // shared too: frozen like the rest
        }
      } else todo.push(d.get, d.set);
    }
    freeze(o);
    todo.push(getPrototypeOf(o));
  }
}
for (const k of keys(api)) G["__ls_" + k] = api[k];
for (const k of keys(globals)) G[k] = globals[k];
G.__ls_lockdown = ls$lockdown;
G.__llmspell_compiled = function ls$compiled(f) { compiled = f; };
})();
"""


# The scratch context: no code is compiled at run time there either (eval and the function
# constructors throw), so a function whose source is exactly the checked text can only be
# that text parsed as one function expression. Its hook counts calls; the check wants one,
# with exactly the source ``t`` (read with the original Function.prototype.toString, which
# code escaping the function body cannot swap in its own call).
_SCRATCH_PRELUDE = r"""
(function () {
  let last = null, calls = 0;
  const source = Function.prototype.call.bind(Function.prototype.toString);
  const noCode = function () { throw new EvalError("no code is compiled at run time"); };
  for (const f of [function () {}, async function () {}, function* () {}, async function* () {}]) {
    Object.defineProperty(Object.getPrototypeOf(f), "constructor", {value: noCode});
  }
  Object.defineProperty(globalThis, "Function", {value: noCode});
  Object.defineProperty(globalThis, "eval", {value: noCode});
  globalThis.__llmspell_compiled = function (f) { last = f; calls++; };
  return function (t) {
    const f = last, n = calls;
    last = null;
    calls = 0;
    return n === 1 && typeof f === "function" && source(f) === t;
  };
})()
"""
_SCRATCH_USES = 500


class _Task:
    __slots__ = (
        "failed",
        "fid",
        "handles",
        "id",
        "seconds",
        "source",
        "started",
        "steps",
        "t",
        "ys",
        "yy",
    )

    def __init__(self, task_id: str, fid: int) -> None:
        self.id, self.fid, self.started, self.steps, self.seconds = task_id, fid, False, 0, 0.0
        self.t: Any = None  # the task's record in JS
        self.ys: Yielded | None = None  # Yielded(Request("sleep", {"seconds": 0}, fid)), reused
        self.yy: Yielded | None = None  # Yielded(Request("yield", {}, fid)), reused
        self.handles: dict[str, str] = {}  # spell.submit handle -> child task id
        self.failed: dict[str, str] = {}  # handle -> why its submit failed
        self.source: str | None = None  # where the code came from, for its errors


def _hook(d: dict[str, Any]) -> Any:
    if _TAG in d and len(d) == 1:
        tag, p = d[_TAG]
        return (
            p.encode("latin-1")
            if tag == "b"
            else float(p)
            if tag == "f"
            else int(p)
            if tag == "i"
            else dict(p)
        )
    return d


_loads = json.JSONDecoder(object_hook=_hook).decode


def _tagged(v: Any, path: str) -> Any:
    """``v`` as JSON-able data, NaN/inf/bytes/odd keys tagged for the JS side."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if v - v == 0 else {_TAG: ["f", "nan" if v != v else "inf" if v > 0 else "-inf"]}
    if isinstance(v, bytes | bytearray | memoryview):
        return {_TAG: ["b", bytes(v).decode("latin-1")]}
    if isinstance(v, list | tuple):
        return [_tagged(x, f"{path}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError(f"{path}: map keys must be str")
        items = {k: _tagged(x, f"{path}.{k}") for k, x in v.items()}
        if any(k.startswith(_TAG) or k == "__proto__" for k in items):
            return {_TAG: ["o", [[k, x] for k, x in items.items()]]}
        return items
    raise TypeError(f"{path}: cannot convert a {type(v).__name__}")


def _to_js(v: Any, path: str) -> tuple[int, Any]:
    """(kind, payload) for the JS side: 0 = as is, 1 = JSON, 2 = tagged JSON."""
    t = type(v)
    if v is None or t is bool or t is float or (t is int and -(2**31) <= v < 2**31):
        return 0, v
    if t is str and v.isascii() and _TAG not in v:
        return 0, v
    try:
        return 1, json.dumps(v, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return 2, json.dumps(_tagged(v, path), allow_nan=False, separators=(",", ":"))


def _user_stack(stack: str) -> tuple[str, int | None]:
    """The JS stack without llmspell's frames, in user line numbers; the first line."""
    lines, first = [], None
    for raw in stack.splitlines():
        m = _FRAME.match(raw)
        if m is None or m.group(1).startswith("ls$") or m.group(1) == "<eval>":
            continue
        name, where, line = m.groups()
        if where == "native":
            lines.append(f"    at {name} (native)")
        elif line is None:
            lines.append(f"    at {name} (task.js)")
        else:
            n = int(line) - _OFFSET
            first = n if first is None else first
            name = "<task>" if name in ("<anonymous>", "anonymous") else name
            lines.append(f"    at {name} (task.js:{n})")
    while lines and lines[-1] == "    at call (native)":  # the runner's fn.call(globalThis)
        lines.pop()
    return "\n".join(lines), first


_LINE = re.compile(r"\(line (\d+)\)$")
_TASK_JS = re.compile(r"\(task\.js(?::(\d+))?\)")


def _at(source: str, line: str | None) -> str:
    if line is None:
        return source
    return f"{source}, line {line}" if " " in source else f"{source}:{line}"


def _relabel(failed: Failed, source: str | None) -> Failed:
    """``failed`` with ``task.js`` / ``(line N)`` named after ``source``."""
    if not source:
        return failed
    msg = _LINE.sub(lambda m: f"({_at(source, m.group(1))})", failed.message)
    tb = _TASK_JS.sub(lambda m: f"({_at(source, m.group(1))})", failed.traceback)
    return Failed(failed.kind, msg, tb)


def _syntax_failure(text: str, code: str) -> Failed:
    first = text.split("\n", 1)[0]
    if "out of memory" in first or "interrupted" in first:
        return Failed("memory" if "memory" in first else "budget", f"{first} while compiling")
    m = _POS.search(text)
    if m is None:
        return Failed("syntax", first)
    n = min(max(int(m.group(1)) - _OFFSET, 1), code.count("\n") + 1)
    return Failed("syntax", f"{first} (line {n})", f"    at <task> (task.js:{n})")


class _Poisoned(Exception):
    pass


class JsVM:
    """Many JavaScript tasks in one frozen QuickJS context (see the module docstring)."""

    language = "js"

    def __init__(
        self,
        host: Host,
        *,
        memory_limit: int = 256 * _MiB,
        step_budget: float = 1.0,
        max_stack_size: int = 512 * 1024,
        compile_cache: int = 256,
        clock: Callable[[], float] | None = None,
        record_clock: bool = False,
    ) -> None:
        if step_budget <= 0:
            raise ValueError("step_budget must be > 0 seconds")
        self._host = host
        # a journaled runtime: Date.now/new Date()/Date() reads are reported to host.clock
        self._record_clock = record_clock
        self._now = clock or _clock  # budgets, cpu_seconds (a simulation counts reads)
        self._shrink = clock is None  # QuickJS's CPU-clock limit follows a real clock only
        self._memory_limit = memory_limit
        self._budget = float(step_budget)
        self._budget_text = (
            f"the task ran for more than its step budget of {step_budget:g} s "
            "without waiting (a busy loop?)"
        )
        self._max_stack = max_stack_size
        self._cache_size = compile_cache
        self._tasks: dict[str, _Task] = {}
        self._finished: OrderedDict[str, _Task] = OrderedDict()
        self._lost: dict[str, Failed] = {}
        self._slots = itertools.count(1)
        self._closed = False
        self._cur_budget = self._budget  # this step's (resume's budget=)
        self._scratch: Any = None  # the context that checks new code (_check_body)
        self._scratch_take: Any = None
        self._scratch_uses = 0
        self._boot()

    def _boot(self) -> None:
        ctx = quickjs.Context()
        ctx.set_memory_limit(self._memory_limit)
        ctx.set_max_stack_size(self._max_stack)
        ctx.eval(_PRELUDE)
        self._js: dict[str, Any] = {k: ctx.get("__ls_" + k) for k in _EXPORTS}
        if self._record_clock:
            self._js["record_clock"]()
        ctx.get("__ls_lockdown")()
        self._ctx: Any = ctx
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._js_resume, self._js_collect = self._js["resume"], self._js["collect"]
        self._ex, self._setl = ctx.execute_pending_job, ctx.set_time_limit
        self._mem, self._mem_next = 0, 0.0

    # -- the protocol --------------------------------------------------------

    def start(
        self,
        task_id: str,
        code: str,
        args: Any = None,
        input: Any = None,
        source: str | None = None,
        clock: list[Any] | None = None,
    ) -> Failed | None:
        """``source`` names where the code came from in its errors and stack
        (``"add.js"``, ``"step 'transform' (flow.yaml:15)"``); default ``task.js``.
        ``clock``: what the task's first clock reads return (a replay; with
        ``record_clock``)."""
        self._check_open()
        if task_id in self._tasks:
            raise ValueError(f"JS task {task_id!r} was already started")
        fn = self._compile(code)
        if isinstance(fn, Failed):
            return _relabel(fn, source)
        try:
            kind, payload = (
                (0, None) if args is None and input is None else _to_js([args, input], "start")
            )
        except (TypeError, ValueError) as e:
            msg = str(e).replace("start[0]", "args").replace("start[1]", "input")
            return Failed("conversion", msg)
        rec = _Task(task_id, -next(self._slots))
        rec.source = source
        try:
            times = json.dumps(clock) if clock else None
            rec.t = self._js["start"](rec.fid, task_id, fn, kind, payload, times)
        except quickjs.JSException as e:
            return Failed("memory" if "out of memory" in str(e) else "runtime", _first(e))
        self._tasks[task_id] = rec
        return None

    def resume(
        self,
        task_id: str,
        value: Any = None,
        error: str | None = None,
        request_id: int = 0,
        budget: float | None = None,
    ) -> StepResult:
        """``budget``: seconds this step may run if less than the VM's step budget
        (what is left of the task's CPU limit); running out is a ``"budget"`` failure."""
        rec = self._tasks.get(task_id)
        if rec is None:
            self._check_open()
            if task_id in self._lost:
                return self._lost.pop(task_id)
            raise KeyError(f"no JS task {task_id!r} here (finished, cancelled or never started)")
        t0 = self._now()
        rec.steps += 1
        b = self._budget if budget is None or budget >= self._budget else max(budget, 1e-3)
        self._cur_budget = b
        try:
            if not rec.started:
                rec.started = True
                self._ctx.set_time_limit(b)
                try:
                    self._js["run"](rec.t)
                finally:
                    self._ctx.set_time_limit(-1)
                return self._step(rec, t0 + b, -2, None, False)
            if error is not None:
                r = self._js_resume(rec.t, request_id, 3, str(error))
            elif value is None:
                r = self._js_resume(rec.t, request_id, 0, None)
            else:
                r = self._js_resume(rec.t, request_id, *_to_js(value, "value"))
            if r == 1:
                if error is None:  # the hot path: drain, then a lone sleep(0)/yield?
                    deadline = t0 + b
                    jobs = self._drain(deadline, 0)
                    raw = self._js_collect()
                    if type(raw) is not str and raw and jobs >= 0:
                        return self._fast(rec, raw)
                    return self._step(rec, deadline, jobs, raw, False)
                return self._step(rec, t0 + b, -2, None, True)
            if r == 0:
                return Waiting()
            raise ValueError(
                f"JS task {task_id!r} has several outstanding requests: pass request_id"
            )
        except quickjs.JSException as e:
            # QuickJS-ng's interrupt cannot be caught, not even by the task's promise:
            # it reaches us from the call that ran the task's code
            if _interrupted(e):
                self._stop(rec.t)
                return self._finish(rec, Failed("budget", self._budget_text))
            self._js["kill"](rec.t)
            return self._finish(
                rec, Failed("memory" if "out of memory" in str(e) else "runtime", _first(e))
            )
        except _Poisoned as e:
            self._reset(str(e))
            self._lost.pop(rec.id, None)
            return self._finish(rec, Failed("budget", str(e)))
        finally:
            rec.seconds += self._now() - t0

    def cancel(self, task_id: str) -> None:
        self._lost.pop(task_id, None)
        rec = self._tasks.pop(task_id, None)
        if rec is not None and not self._closed:
            self._js["kill"](rec.t)
            self._finish(rec, Waiting())

    def memory_in_use(self, exact: bool = False) -> int:
        """QuickJS's malloc'd bytes. Measuring walks the whole heap (17 ms with 10,000
        tasks), so unless ``exact`` the figure is reused for 100x its cost (<= 1% of the
        time; 1.7 s with 10,000 tasks)."""
        self._check_open()
        t0 = self._now()
        if exact or t0 >= self._mem_next:
            self._mem = int(self._ctx.memory()["malloc_size"])
            self._mem_next = t0 + 101 * (self._now() - t0)
        return self._mem

    def close(self) -> None:
        self._closed = True
        self._tasks.clear()
        self._compiled.clear()
        self._js.clear()
        self._scratch = self._scratch_take = None
        self._ctx = self._js_resume = self._js_collect = self._ex = self._setl = None

    # -- extras ----------------------------------------------------------------

    def stats(self, task_id: str) -> dict[str, Any]:
        """``{"steps", "cpu_seconds", "running"}`` of a live or recently ended task;
        ``cpu_seconds`` is the time spent in its steps (JS runs on one thread)."""
        rec = self._tasks.get(task_id)
        running = rec is not None
        if rec is None:
            rec = self._finished[task_id]
        return {"steps": rec.steps, "cpu_seconds": rec.seconds, "running": running}

    def drain_other_results(self) -> list[tuple[str, StepResult]]:
        """Results of tasks that ended outside their own step: only tasks failed
        because the context had to be rebuilt (they also fail on their next resume)."""
        out: list[tuple[str, StepResult]] = list(self._lost.items())
        self._lost.clear()
        return out

    @property
    def tasks(self) -> int:
        """How many tasks this VM holds."""
        return len(self._tasks)

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this JsVM is closed")

    def _compile(self, code: str) -> Any:
        if not isinstance(code, str):
            return Failed("syntax", f"the code must be a str, got {type(code).__name__}")
        fn = self._compiled.get(code)
        if fn is not None:
            self._compiled.move_to_end(code)
            return fn
        if not code.isascii() and lone_surrogate(code) is not None:  # no UTF-8 for QuickJS
            return Failed("syntax", f"the code {lone_surrogate(code)}")
        text = _HEAD + code + _TAIL
        refused = self._check_body(code, text)
        if refused is not None:
            return refused
        # Checked: the text is one function expression and nothing else, so evaluating it
        # as a script runs no code of the task's and declares nothing. (A module would keep
        # its record in the context for good: ~1.4 KB per distinct code string.)
        self._ctx.set_time_limit(self._budget)
        try:
            self._ctx.eval(_script(text))
        except quickjs.JSException as e:
            return _syntax_failure(str(e), code)
        finally:
            self._ctx.set_time_limit(-1)
        fn = self._js["take"](text)
        if fn is None:  # not expected after the check; refuse rather than guess
            return Failed(
                "syntax", "SyntaxError: the code is not a function body (unbalanced braces?)"
            )
        self._compiled[code] = fn
        if len(self._compiled) > self._cache_size:
            self._compiled.popitem(last=False)
        return fn

    def _check_body(self, code: str, text: str) -> Failed | None:
        """Evaluate exactly the script the shared context will (``_compile``) in a
        scratch context (not the tasks' one): a syntax error, or code that escapes the
        function by unbalanced braces (what it ran, it ran there), is refused. The same
        text in the same goal parses the same way in both contexts; a module would not
        (``<!--`` and ``-->`` start comments in a script only), so code could pass as a
        module and escape as a script. A scratch context that ran anything but the one
        call is dropped, and every ``_SCRATCH_USES`` checks."""
        sc = self._scratch
        if sc is None or self._scratch_uses >= _SCRATCH_USES:
            sc = quickjs.Context()
            sc.set_memory_limit(min(self._memory_limit, 64 * _MiB))
            sc.set_max_stack_size(self._max_stack)
            self._scratch_take = sc.eval(_SCRATCH_PRELUDE)
            self._scratch, self._scratch_uses = sc, 0
        self._scratch_uses += 1
        sc.set_time_limit(self._budget)
        try:
            sc.eval(_script(text))
            ok = self._scratch_take(text)
        except quickjs.JSException as e:
            self._scratch = None
            return _syntax_failure(str(e), code)
        finally:
            sc.set_time_limit(-1)
        if not ok:
            self._scratch = None
            return Failed(
                "syntax", "SyntaxError: the code is not a function body (unbalanced braces?)"
            )
        return None

    def _step(self, rec: _Task, deadline: float, jobs: int, raw: Any, rejected: bool) -> StepResult:
        """Finish a step whose promise was settled: drain (unless ``jobs`` > -2 says
        it was drained, ``raw`` what it collected), perform what the step queued,
        decide its result."""
        if jobs == -2:
            jobs = self._drain(deadline, 0)
            raw = self._js_collect()
        if type(raw) is not str:  # a lone sleep(0) (< 0) or yield (> 0), or nothing (0)
            if jobs >= 0 and raw:
                return self._fast(rec, raw)
            raw = _fast_text(raw, rec.fid)
        if rejected and jobs == 0:
            self._host.log(
                rec.id,
                "warning",
                f"unhandled rejection of a spell promise (nothing awaited it) in task {rec.id}",
            )
        reqs: list[Request] = []
        while True:
            over = jobs < 0 or self._now() >= deadline
            if over:
                self._stop(rec.t)
            end, again = self._apply(rec, raw.split("\x1e") if raw else [], reqs)
            if end is not None:
                return self._finish(rec, end)
            if over:
                return self._finish(rec, Failed("budget", self._budget_text))
            if not again:
                break
            for rid, msg in again:
                self._js_resume(rec.t, rid, 3, msg)
            jobs = self._drain(deadline, 0)
            raw = self._js_collect()
            raw = raw if type(raw) is str else _fast_text(raw, rec.fid)
        if reqs:
            return Yielded(reqs[0], tuple(reqs[1:]))
        if self._js["count"](rec.t):
            return Waiting()
        self._js["kill"](rec.t)
        return self._finish(
            rec,
            Failed(
                "runtime",
                "deadlock: the task waits for a promise that nothing can settle "
                "(no spell call or timer of it is pending)",
            ),
        )

    def _drain(self, deadline: float, n: int) -> int:
        """Run jobs until the queue is empty: how many ran, -1 if the budget ran out."""
        ex, setl, budget, clock = self._ex, self._setl, self._cur_budget, self._now
        setl(budget)
        try:
            while True:
                try:
                    if not ex():
                        return n
                except quickjs.JSException as e:
                    if _interrupted(e):  # uncatchable: the job's task is out of budget
                        return -1
                    # else a job failed outside any promise (out of memory): go on
                n += 1
                left = deadline - clock()
                if left <= 0:
                    return -1
                if left < budget / 2 and self._shrink:
                    setl(left)
        finally:
            setl(-1)

    def _stop(self, t: Any) -> None:
        """End task ``t`` in JS, then run what it left queued with an instant interrupt."""
        self._js["kill"](t)
        ctx, limit = self._ctx, max(1.0, 2 * self._budget)
        ctx.set_time_limit(0)
        started = self._now()
        try:
            while True:
                try:
                    if not ctx.execute_pending_job():
                        break
                except quickjs.JSException:
                    pass
                if self._now() - started > limit:
                    raise _Poisoned(
                        "a runaway task's jobs could not be stopped; the JS VM "
                        "was reset and its tasks failed"
                    )
        finally:
            ctx.set_time_limit(-1)
        self._js_collect()
        self._js["kill"](t)

    def _apply(
        self, rec: _Task, entries: list[str], reqs: list[Request]
    ) -> tuple[StepResult | None, list[tuple[int, str]]]:
        """Perform a step's output (fields split by \\x1f, user data as JSON). Returns
        the task's end if it ended, and awaits to reject at once (failed submits)."""
        host, tid = self._host, rec.id
        end: StepResult | None = None
        again: list[tuple[int, str]] = []
        for entry in entries:
            tag, *f = entry.split("\x1f")
            if tag == "S":
                reqs.append(Request("sleep", {"seconds": float(f[1])}, int(f[0])))
            elif tag == "Y":
                reqs.append(Request("yield", {}, int(f[0])))
            elif tag == "A":
                h = _loads(f[1])
                if h in rec.failed:
                    again.append((int(f[0]), rec.failed[h]))
                else:
                    reqs.append(Request("await", {"task_id": rec.handles.get(h, h)}, int(f[0])))
            elif tag == "R":
                reqs.append(Request(f[0], _loads(f[2]), int(f[1])))  # type: ignore[arg-type]
            elif tag == "s":
                h = _loads(f[0])
                try:
                    rec.handles[h] = host.submit(tid, _loads(f[1]))
                except Exception as x:
                    rec.failed[h] = f"spell.submit failed: {x}"
                    host.log(tid, "warning", rec.failed[h])
            elif tag == "e":
                host.emit(tid, _loads(f[0]), _loads(f[1]))
            elif tag == "p":
                host.progress(tid, *_loads(f[0]))
            elif tag == "l":
                host.log(tid, *_loads(f[0]))
            elif tag == "T":
                host.clock(tid, f[0], _loads(f[1]))
            elif tag == "d":
                end = Completed(_loads(f[0]))
            else:
                end = _relabel(self._failure(*_loads(f[0])), rec.source)
        return end, again

    def _failure(self, kind: Any, msg: str, stack: str, data: str | None = None) -> Failed:
        """The task's end from what ls$fail recorded; ``data``: a thrown value that is
        not an Error (``throw {code: 42}``), as wire JSON, kept as the error's data."""
        tb, line = _user_stack(stack)
        if data is not None:
            return Failed(kind, msg, tb, _loads(data))  # msg: "uncaught {...}" as it is
        if kind == "budget":
            msg = self._budget_text
        elif kind == "memory":
            msg = f"out of memory: the JS VM's limit of {self._memory_limit} bytes was reached"
        elif msg == "uncaught null" and not tb:
            # QuickJS throws null when it cannot even allocate its "out of memory" error
            msg = (
                "uncaught null: the script threw null, or the JS VM ran out of memory "
                f"(its limit is {self._memory_limit} bytes)"
            )
        elif line is not None and kind == "runtime":
            msg = f"{msg} (line {line})"
        return Failed(kind, msg, tb)

    def _fast(self, rec: _Task, raw: int) -> Yielded:
        """The step's lone ``sleep(0)`` (raw < 0) or ``yield`` (raw > 0); +-1: with the
        task's own id, a Request made once per task and reused."""
        if raw == -1:
            y = rec.ys
            if y is None:
                y = rec.ys = Yielded(Request("sleep", {"seconds": 0.0}, rec.fid))
            return y
        if raw == 1:
            y = rec.yy
            if y is None:
                y = rec.yy = Yielded(Request("yield", {}, rec.fid))
            return y
        return _fast_yield(raw)

    def _finish(self, rec: _Task, result: StepResult) -> StepResult:
        """Forget ``rec`` (keeping its stats for a while)."""
        rec.t = rec.ys = rec.yy = None
        self._tasks.pop(rec.id, None)
        self._finished[rec.id] = rec
        if len(self._finished) > 4096:
            self._finished.popitem(last=False)
        return result

    def _reset(self, why: str) -> None:
        lost = list(self._tasks.values())
        self._tasks.clear()
        for rec in lost:
            self._lost[rec.id] = Failed("runtime", why)
            self._finish(rec, Waiting())
        _log.warning("JsVM reset: %s (%d tasks failed)", why, len(lost))
        self._boot()


def _script(text: str) -> str:
    """The script that compiles a task's function (checked first in a scratch context)."""
    return '"use strict";__llmspell_compiled(' + text + ");"


def _interrupted(e: BaseException) -> bool:
    """QuickJS's time limit stopped the code (an uncatchable ``InternalError``)."""
    return str(e).startswith("InternalError: interrupted")


def _first(e: BaseException) -> str:
    return str(e).split("\n", 1)[0]


_new = object.__new__
_req_op, _req_args, _req_id = (Request.__dict__[k].__set__ for k in ("op", "args", "id"))
_y_req, _y_more = (Yielded.__dict__[k].__set__ for k in ("request", "more"))


def _fast_yield(raw: int) -> Yielded:
    """``Yielded(Request("sleep", {"seconds": 0.0}, -raw))`` for raw < 0, else
    ``Yielded(Request("yield", {}, raw))``, built without the frozen dataclasses'
    ``__init__`` (half the cost; this is every ``await spell.sleep(0)``)."""
    r = _new(Request)
    if raw < 0:
        _req_op(r, "sleep")
        _req_args(r, {"seconds": 0.0})
        _req_id(r, int(-raw))
    else:
        _req_op(r, "yield")
        _req_args(r, {})
        _req_id(r, int(raw))
    y = _new(Yielded)
    _y_req(y, r)
    _y_more(y, ())
    return y


def _fast_text(raw: Any, fid: int) -> str:
    """The entry text of collect's numeric answer (a lone sleep(0) or yield, or 0)."""
    if not raw:
        return ""
    rid = fid if raw in (1, -1) else abs(int(raw))
    return f"S\x1f{rid}\x1f0" if raw < 0 else f"Y\x1f{rid}"
