// llmspell's JavaScript prelude: the sandbox every JS task runs in (evaluated once per JsVM; see js_vm.py)
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
const perf = G.performance, perfNow = perf && typeof perf.now === "function"
  ? perf.now.bind(perf) : null;

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
// With a journal (record_clock), Date.now(), new Date(), Date() and performance.now() are
// clock reads the host records ("T" entries); a replayed task reads its recorded values
// first (t.times).
function ls$now(what, live) {
  const read = live === undefined ? dateNow : live;
  const t = cur;
  if (t === null || t.done) return read();
  const v = t.times !== null && t.ti < t.times.length ? t.times[t.ti++] : read();
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
  if (perfNow !== null) {  // its "now" cannot be redefined: a performance of our own
    const P = {};
    defineProperty(P, "now", {value: {now() { return ls$now("performance.now", perfNow); }}.now,
      writable: true, configurable: true, enumerable: true});
    const origin = () => perf.timeOrigin;
    defineProperty(P, "timeOrigin", {enumerable: true, configurable: true,
      get: function timeOrigin() { return ls$now("performance.timeOrigin", origin); }});
    defineProperty(G, "performance", {value: P, writable: true, configurable: true});
  }
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
  // start and run in one call (a task's first step): its record
  begin: function ls$begin(fid, tid, fn, kind, payload, times) {
    const t = api.start(fid, tid, fn, kind, payload, times);
    api.run(t);
    return t;
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
