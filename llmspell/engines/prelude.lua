-- llmspell's Lua prelude: the sandbox every Lua task runs in (loaded once per LuaVM; see lua_vm.py)
local over, h_submit, h_emit, h_progress, h_log, COUNT, PREFIX, SUFFIX, h_clock, h_current,
      h_due = ...
local type, next, error, select, tostring, rawget, rawset, rawequal =
      type, next, error, select, tostring, rawget, rawset, rawequal
local setmetatable, getmetatable, pcall, xpcall, load, collectgarbage =
      setmetatable, getmetatable, pcall, xpcall, load, collectgarbage
local co_create, co_resume, co_yield, co_running, co_close, co_status =
      coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.close,
      coroutine.status
local sethook, traceback, getinfo, getlocal, getupvalue, rawmeta =
      debug.sethook, debug.traceback, debug.getinfo, debug.getlocal, debug.getupvalue,
      debug.getmetatable
local spack, schar, concat, mtype, utf8len = string.pack, string.char, table.concat,
      math.type, utf8.len
local sbyte, sunpack, mtointeger, mult = string.byte, string.unpack, math.tointeger, math.ult
local assert, ipairs, pairs, tonumber, rawlen, VERSION =
      assert, ipairs, pairs, tonumber, rawlen, _VERSION
local string, table, math, utf8, os, coroutine, G = string, table, math, utf8, os, coroutine, _G
-- No code below names a global (Lua 5.5 refuses to compile one): no function here holds
-- the real globals as its _ENV, so caller_env (walking the stack through our wrappers)
-- can never hand them to a script's load.
global none

-- step budget: the host's over() says when the running resume is past its deadline. Then
-- the hook raises KILL at once and at every instruction after (count 1), in this thread and
-- in any other of the task's threads at its next hook call: a script that catches KILL
-- (pcall, xpcall, a coroutine) gets it again at the next instruction outside the catch, so
-- pcall needs no wrapper (and errors keep the user's positions); the host fails
-- a task that swallowed KILL and yielded or returned all the same. (xpcall keeps a
-- wrapper: see BASE.)
-- fresh: a batch (H.batch) has just resumed another task, whose budget clock starts at
-- this hook call (a resume from the host restarts the clock itself)
-- HOOKED: the hook was called (H.batch ends after such a resume: a task computed a while)
local KILL, killed, closing, fresh, HOOKED = {}, false, false, false, false
local function hook()
  local f = fresh
  fresh, HOOKED = false, true
  if (killed and not closing) or over(f) then
    killed = true
    if not closing then sethook(co_running(), hook, "", 1) end
    error(KILL, 0)
  end
end
local function rethrow(...)
  if killed then error(KILL, 0) end
  return ...
end

-- Argument errors raised by a wrapper as Lua's own C function raises them: named as the
-- caller named the wrapper (or with its library name when the caller gave none, e.g.
-- pcall(coroutine.wrap, nil)), at the caller's position. Called as argerr(...) from the
-- wrapper itself (level 1 = argerr, 2 = the wrapper, 3 = its caller).
local function argerr(n, fname, msg)
  local info = getinfo(2, "n")
  local name = info and info.name or fname
  error("bad argument #" .. n .. " to '" .. name .. "' (" .. msg .. ")", 3)
end
local function typename(v, present)
  if not present then return "no value" end
  local mt = rawmeta(v)
  local name = type(mt) == "table" and rawget(mt, "__name")
  if type(name) == "string" then return name end
  return type(v)
end

-- A task's globals table (_G) starts holding only _G and spell; its metatable ENV_MT reads
-- the rest from BASE. The first time a script looks at the table itself (pairs, next,
-- rawget, rawset, getmetatable, setmetatable, or assigning nil to a BASE name) it is
-- "materialized": BASE's names are copied in and ENV_MT removed, so from then on it is a
-- plain table as Lua's _G is. Tasks that never look pay no memory for the copy.
local BASE, BASE_NEXT, ENV_MT
local function materialize(env)
  for k, v in next, BASE do
    if rawget(env, k) == nil then rawset(env, k, v) end
  end
  setmetatable(env, nil)
end
local RO = {}  -- read-only library proxy -> the table it shows
local TASKS = setmetatable({}, {__mode = "k"})  -- the task threads -> their task ids
local OWNER = setmetatable({}, {__mode = "k"})  -- a script's own coroutine -> its task thread
-- A host call made while H.batch runs tells the host first which task makes it (the host
-- knows it for a resume it made itself), and ends the batch after this resume.
local BATCH_CO, HOSTED = nil, false
local function synced(f)
  if f == nil then return nil end
  return function(...)
    local co = BATCH_CO
    if co ~= nil then
      BATCH_CO, HOSTED = nil, true
      h_current(TASKS[co])
    end
    return f(...)
  end
end
h_submit, h_emit, h_progress, h_log, h_clock =
  synced(h_submit), synced(h_emit), synced(h_progress), synced(h_log), synced(h_clock)

local function readonly(src, name)
  local p = setmetatable({}, {
    __index = src, __metatable = false,
    __newindex = function() error("attempt to modify read-only table '" .. name .. "'", 2) end,
    __pairs = function(t) return BASE_NEXT, t, nil end,
  })
  RO[p] = src
  return p
end

local function s_create(f)
  local co = co_create(f)
  local by = co_running()
  OWNER[co] = OWNER[by] or by
  if COUNT > 0 then sethook(co, hook, "", COUNT) end
  return co
end
-- What a task thread yields to the host, untagged, is a spell request: nothing: sleep(0);
-- false: yield; true: resource wait; a number: sleep(n); a string: await(handle);
-- 1, pattern, timeout: wait_event; 2, tasks, strategy, timeout, inputs: coordinate.
-- The script's own coroutine.yield always yields USER first, so it cannot forge one.
-- A spell call inside a script's own coroutine yields untagged to our resume: we pass it
-- up (to the task thread, then the host) and send the answer back down.
local USER = {}
local function forward(co, ok, ...)
  if ok and co_status(co) == "suspended" then
    if rawequal((...), USER) then return rethrow(true, select(2, ...)) end
    return forward(co, co_resume(co, co_yield(...)))
  end
  return rethrow(ok, ...)
end
local function wrap_fwd(co, ok, ...)
  if killed then error(KILL, 0) end
  if not ok then
    local e = ...
    if co_status(co) == "dead" then
      -- as Lua's wrap: close the dead coroutine (its pending to-be-closed variables),
      -- whose error wins
      local cok, ce = co_close(co)
      if not cok then e = ce end
      if killed then error(KILL, 0) end
    end
    -- level 2: the position of whoever called the wrap function (wrap_fwd replaced it by
    -- a tail call), as Lua's wrap adds to a string error; none to a memory error
    error(e, e == "not enough memory" and 0 or 2)
  end
  if co_status(co) == "suspended" then
    if rawequal((...), USER) then return select(2, ...) end
    return wrap_fwd(co, co_resume(co, co_yield(...)))
  end
  return ...
end
local new_env
local function caller_env()
  -- the _ENV of the nearest script function up the stack (Lua 5.1's getfenv, roughly)
  for level = 3, 100 do
    local info = getinfo(level, "f")
    if info == nil then break end
    local env, i = nil, 1
    while true do
      local name, v = getlocal(level, i)
      if name == nil then break end
      if name == "_ENV" then env = v end
      i = i + 1
    end
    if env ~= nil then return env end
    for j = 1, 255 do
      local name, v = getupvalue(info.func, j)
      if name == nil then break end
      if name == "_ENV" then return v end
    end
  end
  -- no script function above (load called by the coroutine machinery, e.g.
  -- coroutine.wrap(load)): globals of its own, never a table tasks share
  return new_env()
end
-- math.random and math.randomseed are per task: each task has its own generator
-- (SplitMix64), seeded from its task id, so a task that runs again (a retry, a replay)
-- draws the same numbers. The state lives with the task's thread (OWNER maps a script's
-- own coroutines to it).
local RNG = setmetatable({}, {__mode = "k"})  -- task thread -> {state, reseeds}
local function seed_of(id)  -- FNV-1a over the id's bytes
  local h = 0xcbf29ce484222325
  for i = 1, #id do h = (h ~ sbyte(id, i)) * 0x100000001b3 end
  return h
end
local function rng_state(task)
  local st = RNG[task]
  if st == nil then
    local id = TASKS[task]
    st = {type(id) == "string" and seed_of(id) or 0, 0}
    RNG[task] = st
  end
  return st
end
local function next64(st)  -- SplitMix64
  local z = st[1] + 0x9e3779b97f4a7c15
  st[1] = z
  z = (z ~ (z >> 30)) * 0xbf58476d1ce4e5b9
  z = (z ~ (z >> 27)) * 0x94d049bb133111eb
  return z ~ (z >> 31)
end
-- the thread that called last and its generator: most calls come from the same one
local last_co, last_st = nil, nil
local function project(ran, n, st)  -- ran into [0, n], both unsigned (as Lua's own)
  if n & (n + 1) == 0 then return ran & n end
  local lim = n
  lim = lim | (lim >> 1); lim = lim | (lim >> 2); lim = lim | (lim >> 4)
  lim = lim | (lim >> 8); lim = lim | (lim >> 16); lim = lim | (lim >> 32)
  ran = ran & lim
  while mult(n, ran) do ran = next64(st) & lim end
  return ran
end
local function int_arg(v)  -- luaL_checkinteger's conversion: the integer, or nil and why
  local r = mtointeger(v)
  if r ~= nil then return r end
  local x = type(v) == "string" and tonumber(v) or nil
  if x ~= nil then
    r = mtointeger(x)
    if r ~= nil then return r end
  end
  if type(v) == "number" or x ~= nil then return nil, "number has no integer representation" end
  return nil, "number expected, got " .. typename(v, true)
end
local function s_random(...)
  local co = co_running()
  local st = last_st
  if co ~= last_co then
    st = rng_state(OWNER[co] or co)
    last_co, last_st = co, st
  end
  local z = st[1] + 0x9e3779b97f4a7c15  -- next64, inline
  st[1] = z
  z = (z ~ (z >> 30)) * 0xbf58476d1ce4e5b9
  z = (z ~ (z >> 27)) * 0x94d049bb133111eb
  local rv = z ~ (z >> 31)
  local low, up = ...
  local n, e
  if up == nil then
    n = select("#", ...)
    if n == 0 then return (rv >> 11) * 0x1p-53 end
  else
    n = 2
  end
  if n == 1 then
    up, e = int_arg(low)
    if up == nil then argerr(1, "random", e) end
    if up == 0 then return rv end  -- all bits random, as Lua's math.random(0)
    low = 1
  elseif n == 2 then
    if mtype(low) ~= "integer" then
      low, e = int_arg(low)
      if low == nil then argerr(1, "random", e) end
    end
    if mtype(up) ~= "integer" then
      up, e = int_arg(up)
      if up == nil then argerr(2, "random", e) end
    end
    if select("#", ...) > 2 then error("wrong number of arguments", 2) end
  else
    error("wrong number of arguments", 2)
  end
  if not (low <= up) then argerr(n, "random", "interval is empty") end
  return low + project(rv, up - low, st)
end
local function seed_arg(v)  -- an integer as is; a float by its bits unless integral
  if type(v) == "number" and mtype(v) == "float" and mtointeger(v) == nil then
    return (sunpack("<i8", spack("<d", v)))
  end
  return int_arg(v)
end
-- math.randomseed(x [, y]) seeds this task's generator; with no argument, from the task
-- id and how many times it was called so (never from the clock: a replay must see the
-- same numbers). Returns the two seed components, as Lua's does.
local function s_randomseed(...)
  local co = co_running()
  local task = OWNER[co] or co
  local st = rng_state(task)
  local n1, n2
  if select("#", ...) == 0 then
    st[2] = st[2] + 1
    local id = TASKS[task]
    n1, n2 = type(id) == "string" and seed_of(id) or 0, st[2]
  else
    local e
    n1, e = seed_arg((...))
    if n1 == nil then argerr(1, "randomseed", e) end
    n2 = 0
    if select("#", ...) > 1 then
      n2, e = seed_arg((select(2, ...)))
      if n2 == nil then argerr(2, "randomseed", e) end
    end
  end
  st[1] = n1 ~ (n2 * 0xbf58476d1ce4e5b9)
  return n1, n2
end
local MATH = {}
for k, v in next, math do MATH[k] = v end
MATH.random, MATH.randomseed = s_random, s_randomseed

-- os: with a journal (h_clock given), every clock read is a host call the host records
-- and, in a replay, answers with the value recorded; os.time(t) and os.date(fmt, t)
-- read no clock
local OS
if h_clock then
  local os_time, os_clock, os_date = os.time, os.clock, os.date
  OS = {
    time = function(...)
      if (...) ~= nil then return os_time(...) end
      return h_clock("os.time", os_time())
    end,
    clock = function() return h_clock("os.clock", os_clock()) end,
    date = function(...)
      local fmt, t = ...
      if t == nil then t = h_clock("os.date", os_time()) end
      return os_date(fmt, t)
    end,
  }
else
  OS = {time = os.time, clock = os.clock, date = os.date}
end
-- pairs: with a journal, a plain table's keys come in an order that is the same in every
-- process: numbers ascending, then strings, then false and true, then the rest. Lua seeds
-- its string hashes per state, so the native order of string keys differs from one process
-- to the next, and a script making host calls in pairs order would diverge on a replay.
-- A table with __pairs (the library proxies, the globals) iterates as it says; a key set to
-- nil during the loop is skipped, as natively. (next keeps Lua's own order.)
local PAIRS = pairs
if h_clock then
  local RANK, sort = {number = 1, string = 2, boolean = 3}, table.sort
  local function before(a, b)
    local ra, rb = RANK[type(a)] or 4, RANK[type(b)] or 4
    if ra ~= rb then return ra < rb end
    if ra == 3 then return b and not a end
    if ra == 4 then return false end
    return a < b
  end
  PAIRS = function(...)
    local t = ...
    local mt = type(t) == "table" and rawmeta(t) or nil
    if type(t) ~= "table" or (mt ~= nil and rawget(mt, "__pairs") ~= nil) then
      return pairs(...)
    end
    local keys, n, i = {}, 0, 0
    for k in next, t do n = n + 1; keys[n] = k end
    sort(keys, before)
    return function(tt)
      while i < n do
        i = i + 1
        local k = keys[i]
        local v = rawget(tt, k)
        if v ~= nil then return k, v end
      end
      return nil
    end, t, nil
  end
end
local GC_OPTS = {stop = 1, restart = 1, collect = 1, count = 1, step = 1, isrunning = 1,
                 generational = 1, incremental = 1, param = 1}
-- The globals every task starts with (see ENV_MT, materialize). The library tables are
-- shared read-only proxies; next and rawget see through them.
BASE = {
  assert = assert, error = error, ipairs = ipairs, pairs = PAIRS, select = select,
  tonumber = tonumber, tostring = tostring, type = type, rawequal = rawequal,
  rawlen = rawlen, pcall = pcall, _VERSION = VERSION,
  -- Lua runs a message handler with hooks off when the error came from a hook (KILL): the
  -- script's handler must not run then, or it could loop for ever
  xpcall = function(f, h, ...)
    if type(h) ~= "function" then
      argerr(2, "xpcall", "function expected, got " .. typename(h, h ~= nil or
        select("#", ...) > 0))
    end
    local wh = function(e) if killed then return e end return h(e) end
    if f == error and type((...)) == "string" then
      -- xpcall(error, h, msg, level): the position error would find at that level (our
      -- frame sits between); getinfo(level) from here is the frame Lua's error names
      local msg, level = ...
      if mtype(level) == "integer" and level >= 2 then
        local info = getinfo(level, "Sl")
        local pos = info and info.currentline > 0
          and (info.short_src .. ":" .. info.currentline .. ": ") or ""
        return xpcall(error, wh, pos .. msg, 0)
      end
    end
    return xpcall(f, wh, ...)
  end,
  -- These wrappers check their arguments as Lua's functions do: a C function called from
  -- here would name this prelude's line in its error.
  next = function(...)
    local t = ...
    if type(t) ~= "table" then
      argerr(1, "next", "table expected, got " .. typename(t, select("#", ...) > 0))
    end
    local src = RO[t]
    if src then return next(src, select(2, ...)) end
    if rawmeta(t) == ENV_MT then materialize(t) end
    return next(...)
  end,
  rawget = function(...)
    local t = ...
    local n = select("#", ...)
    if type(t) ~= "table" then
      argerr(1, "rawget", "table expected, got " .. typename(t, n > 0))
    elseif n < 2 then
      argerr(2, "rawget", "value expected")
    end
    local src = RO[t]
    if src then return rawget(src, select(2, ...)) end
    if rawmeta(t) == ENV_MT then materialize(t) end
    return rawget(...)
  end,
  rawset = function(...)
    local t = ...
    local n = select("#", ...)
    if type(t) ~= "table" then
      argerr(1, "rawset", "table expected, got " .. typename(t, n > 0))
    elseif n < 3 then
      argerr(n + 1, "rawset", "value expected")
    elseif RO[t] then
      error("attempt to modify a read-only table", 2)
    end
    if rawmeta(t) == ENV_MT then materialize(t) end
    local k = select(2, ...)
    if k == nil or k ~= k then  -- Lua's "index is nil" / "index is NaN", without our line
      local _, e = pcall(rawset, ...)
      error(e, 0)
    end
    rawset(...)
    return t
  end,
  setmetatable = function(...)
    local t, mt = ...
    local n = select("#", ...)
    if type(t) ~= "table" then
      argerr(1, "setmetatable", "table expected, got " .. typename(t, n > 0))
    elseif mt ~= nil and type(mt) ~= "table" or n < 2 then
      argerr(2, "setmetatable", "nil or table expected, got " .. typename(mt, n > 1))
    end
    local old = rawmeta(t)
    if old == ENV_MT then materialize(t); old = nil end
    if old and rawget(old, "__metatable") ~= nil then
      error("cannot change a protected metatable", 2)
    end
    if mt and rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not allowed in the sandbox", 2)
    end
    return setmetatable(t, mt)
  end,
  getmetatable = function(...)
    if select("#", ...) == 0 then argerr(1, "getmetatable", "value expected") end
    local o = ...
    if type(o) == "userdata" then return nil end
    local mt = getmetatable(o)
    if mt == ENV_MT then return nil end  -- a globals table has none (see materialize)
    return mt
  end,
  load = function(chunk, name, mode, ...)
    if mode ~= nil and mode ~= "t" then
      error("load: only text chunks (mode \"t\") are allowed in the sandbox", 2)
    end
    local tc = type(chunk)
    if tc ~= "string" and tc ~= "number" and tc ~= "function" then
      argerr(1, "load", "function expected, got " .. typename(chunk, chunk ~= nil or
        select("#", ...) > 0 or mode ~= nil or name ~= nil))
    end
    if select("#", ...) > 0 then return load(chunk, name, "t", ...) end
    return load(chunk, name, "t", caller_env())
  end,
  collectgarbage = function(...)
    local opt = ...
    if opt == "count" then return collectgarbage("count") end
    if opt ~= nil and type(opt) ~= "string" then
      argerr(1, "collectgarbage", "string expected, got " .. typename(opt, true))
    elseif opt ~= nil and not GC_OPTS[opt] then
      argerr(1, "collectgarbage", "invalid option '" .. opt .. "'")
    end
    error("collectgarbage: only \"count\" is allowed in the sandbox", 2)
  end,
  print = function(...)
    local n, parts = select("#", ...), {}
    for i = 1, n do
      local ok, s = pcall(tostring, (select(i, ...)))
      if not ok then
        -- tostring's own complaint gets the caller's position, as from Lua's print
        error(s, s == "'__tostring' must return a string" and 2 or 0)
      end
      parts[i] = s
    end
    h_log("info", concat(parts, "\t"))
  end,
}
BASE_NEXT = BASE.next
BASE.string, BASE.table = readonly(string, "string"), readonly(table, "table")
BASE.math, BASE.utf8 = readonly(MATH, "math"), readonly(utf8, "utf8")
BASE.os = readonly(OS, "os")
BASE.coroutine = readonly({
  running = co_running, status = co_status, isyieldable = coroutine.isyieldable,
  -- a task's own thread plays Lua's main thread: closing it is refused as Lua refuses that
  close = function(...)
    local co = ...
    local n = select("#", ...)
    if n == 0 then co = co_running() end
    if type(co) ~= "thread" then
      argerr(1, "coroutine.close", "thread expected, got " .. typename(co, n > 0))
    end
    local st = co_status(co)
    if st == "normal" then error("cannot close a normal coroutine", 2) end
    if st == "running" and TASKS[co] then error("cannot close main thread", 2) end
    return co_close(co)
  end,
  create = function(...)
    if type((...)) ~= "function" then
      argerr(1, "coroutine.create", "function expected, got " ..
        typename((...), select("#", ...) > 0))
    end
    return s_create((...))
  end,
  yield = function(...) return co_yield(USER, ...) end,
  resume = function(...)
    local co = ...
    if type(co) ~= "thread" then
      argerr(1, "coroutine.resume", "thread expected, got " ..
        typename(co, select("#", ...) > 0))
    end
    return forward(co, co_resume(...))
  end,
  wrap = function(...)
    if type((...)) ~= "function" then
      argerr(1, "coroutine.wrap", "function expected, got " ..
        typename((...), select("#", ...) > 0))
    end
    local co = s_create((...))
    return function(...) return wrap_fwd(co, co_resume(co, ...)) end
  end,
}, "coroutine")
string.dump = nil
getmetatable("").__metatable = false
ENV_MT = {
  __index = BASE,
  __newindex = function(t, k, v)
    if k == nil then error("table index is nil", 2) end
    if k ~= k then error("table index is NaN", 2) end
    if v == nil then
      if BASE[k] ~= nil then materialize(t); t[k] = nil end
      return
    end
    rawset(t, k, v)
  end,
  __pairs = function(t) materialize(t); return BASE_NEXT, t, nil end,
}
function new_env(spell)
  local env = setmetatable({_G = false, spell = spell}, ENV_MT)
  env._G = env
  return env
end

-- Lua -> msgpack, with the path of what cannot be converted
local conv_msg, PATH = nil, {}
local function fail(depth, root, what)
  local parts = {root}
  for i = 1, depth do
    local k = PATH[i]
    parts[i + 1] = type(k) == "number" and ("[" .. k .. "]") or ("." .. k)
  end
  conv_msg = concat(parts) .. ": " .. what
  return false
end
local function hdr(len, fix, fixmax, c8, c16, c32)
  if len < fixmax then return schar(fix + len)
  elseif c8 and len < 256 then return schar(c8, len)
  elseif len < 65536 then return spack(">BI2", c16, len) end
  return spack(">BI4", c32, len)
end
local function enc_str(s, buf, n)  -- str when valid UTF-8, else bin
  if utf8len(s) then buf[n] = hdr(#s, 0xa0, 32, 0xd9, 0xda, 0xdb)
  else buf[n] = hdr(#s, 0, 0, 0xc4, 0xc5, 0xc6) end
  buf[n + 1] = s
  return n + 2
end
local function enc(v, buf, n, depth, root, seen)
  local tv = type(v)
  if tv == "string" then return enc_str(v, buf, n)
  elseif tv == "number" then
    if mtype(v) == "integer" then
      buf[n] = (v >= 0 and v < 128) and schar(v) or spack(">Bi8", 0xd3, v)
    else buf[n] = spack(">Bd", 0xcb, v) end
    return n + 1
  elseif tv == "boolean" then buf[n] = v and "\xc3" or "\xc2"; return n + 1
  elseif v == nil then buf[n] = "\xc0"; return n + 1
  elseif tv ~= "table" then return fail(depth, root, "cannot convert a " .. tv)
  end
  if seen[v] then return fail(depth, root, "cannot convert a table that contains itself") end
  if depth >= 100 then return fail(depth, root, "nested too deeply") end
  local ni, ns, maxi = 0, 0, 0
  for k in next, v do
    if type(k) == "string" then ns = ns + 1
    elseif mtype(k) == "integer" and k > 0 then
      ni = ni + 1
      if k > maxi then maxi = k end
    else
      return fail(depth, root, "cannot convert a table with a " .. type(k) .. " key ("
        .. tostring(k) .. "); keys must be strings or exactly 1..n")
    end
  end
  if ni > 0 and ns > 0 then
    return fail(depth, root, "cannot convert a table with mixed keys (strings and integers)")
  elseif maxi ~= ni then
    return fail(depth, root, "cannot convert a table whose integer keys are not exactly 1..n")
  end
  seen[v] = true
  depth = depth + 1
  if ni > 0 then
    buf[n] = hdr(ni, 0x90, 16, nil, 0xdc, 0xdd)
    n = n + 1
    for i = 1, ni do
      PATH[depth] = i
      n = enc(rawget(v, i), buf, n, depth, root, seen)
      if not n then return false end
    end
  else
    buf[n] = hdr(ns, 0x80, 16, nil, 0xde, 0xdf)
    n = n + 1
    for k, x in next, v do
      if not utf8len(k) then return fail(depth - 1, root, "a key is not valid UTF-8") end
      PATH[depth] = k
      n = enc(x, buf, enc_str(k, buf, n), depth, root, seen)
      if not n then return false end
    end
  end
  seen[v] = nil
  return n
end
local function encode(v, root)
  local buf = {}
  if not enc(v, buf, 1, 0, root, {}) then return nil end
  return concat(buf)
end

-- the spell API
local SPELL = {}
local SPELL_MT = {__index = SPELL, __metatable = false}
local function check_data(v, root, level)
  local data = encode(v, root)
  if data == nil then error(conv_msg, level + 1) end
  return data
end
local function submit(spec, level)
  if type(spec) ~= "table" then error("spell.submit: spec must be a table", level + 1) end
  local id, err = h_submit(check_data(spec, "spec", level + 1))
  if id == nil then error(err, level + 1) end
  return id
end
local function await(h, level)
  if type(h) ~= "string" then
    error("spell.await: expected a task handle (string), got " .. type(h), level + 1)
  end
  local v, e = co_yield(h)
  if e ~= nil then error(e, 0) end
  return v
end
function SPELL.sleep(s)
  local _, e
  if s == 0 then
    if killed then error(KILL, 0) end
    _, e = co_yield()
  else
    if type(s) ~= "number" or not (s >= 0) then
      error("spell.sleep: seconds must be a non-negative number", 2)
    end
    _, e = co_yield(s + 0.0)
  end
  if e ~= nil then error(e, 0) end
end
function SPELL.yield()
  if killed then error(KILL, 0) end
  local _, e = co_yield(false)
  if e ~= nil then error(e, 0) end
end
function SPELL._resource_wait()
  if killed then error(KILL, 0) end
  local _, e = co_yield(true)
  if e ~= nil then error(e, 0) end
end
function SPELL.submit(spec)
  local id = submit(spec, 2)
  return id
end
function SPELL.await(h)
  local v = await(h, 2)
  return v
end
function SPELL.run(spec)
  local v = await(submit(spec, 2), 2)
  return v
end
function SPELL.tool(name, params)
  local v = await(submit({tool = name, params = params}, 2), 2)
  return v
end
function SPELL.agent(name, input)
  local v = await(submit({agent = name, input = input}, 2), 2)
  return v
end
function SPELL.wait_event(pattern, timeout)
  if type(pattern) ~= "string" then error("spell.wait_event: pattern must be a string", 2) end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
    error("spell.wait_event: timeout must be a number of seconds or nil", 2)
  end
  local v, e = co_yield(1, pattern, timeout)
  if e ~= nil then error(e, 0) end
  if type(v) ~= "table" then return nil end
  return v.name, v.payload
end
function SPELL.coordinate(tasks, strategy, opts)
  if type(tasks) ~= "table" then error("spell.coordinate: tasks must be a list of specs", 2) end
  if type(strategy) ~= "string" then error("spell.coordinate: strategy must be a string", 2) end
  if opts ~= nil and type(opts) ~= "table" then
    error("spell.coordinate: opts must be a table", 2)
  end
  local timeout, inputs = opts and opts.timeout, opts and opts.inputs
  if timeout ~= nil and type(timeout) ~= "number" then
    error("spell.coordinate: opts.timeout must be a number", 2)
  end
  local td = check_data(tasks, "tasks", 2)
  local id = inputs ~= nil and check_data(inputs, "inputs", 2) or nil
  local v, e = co_yield(2, td, strategy, timeout, id)
  if e ~= nil then error(e, 0) end
  if type(v) == "table" then  -- every index 1-based, as results is in Lua
    if type(v.winner) == "number" then v.winner = v.winner + 1 end
    for _, key in next, {"succeeded", "cancelled"} do
      local list = v[key]
      if type(list) == "table" then
        for i = 1, #list do list[i] = list[i] + 1 end
      end
    end
    if type(v.failed) == "table" then
      for i = 1, #v.failed do
        local f = v.failed[i]
        if type(f) == "table" and type(f[1]) == "number" then f[1] = f[1] + 1 end
      end
    end
  end
  return v
end
function SPELL.emit(name, payload)
  if type(name) ~= "string" then error("spell.emit: name must be a string", 2) end
  local err = h_emit(name, check_data(payload, "payload", 2))
  if err ~= nil then error(err, 2) end
end
function SPELL.progress(done, total, message)
  if type(done) ~= "number" then error("spell.progress: done must be a number", 2) end
  if total ~= nil and type(total) ~= "number" then
    error("spell.progress: total must be a number or nil", 2)
  end
  if message ~= nil then message = tostring(message) end
  local err = h_progress(done, total, message)
  if err ~= nil then error(err, 2) end
end
function SPELL.log(level, message)
  local err = h_log(tostring(level), tostring(message))
  if err ~= nil then error(err, 2) end
end

-- tasks: the host makes a coroutine of runner with (body, task_id, args, input). The body
-- is a main chunk whose only upvalue (_ENV) is take: its first statement takes the task's
-- globals and spell from here, so the chunk is called with no arguments (its ... is empty,
-- as a main chunk's is) and stays the "main chunk" in tracebacks.
local MAIL_ENV, MAIL_SPELL
local function take()
  local env, spell = MAIL_ENV, MAIL_SPELL
  MAIL_ENV, MAIL_SPELL = nil, nil
  return env, spell
end
local function runner(body, task_id, args, input)
  local co = co_running()
  TASKS[co] = task_id
  if COUNT > 0 then sethook(co, hook, "", COUNT) end
  local spell = setmetatable({task_id = task_id, args = args, input = input}, SPELL_MT)
  MAIL_ENV, MAIL_SPELL = new_env(spell), spell
  return body()  -- a tail call: no frame of ours stays under the script's
end
local H = {runner = runner}
function H.compile(code, name)
  local chunk = "=" .. (name or "task")  -- errors read "<name>:<line>: ..."
  local f, err = load(PREFIX .. code .. SUFFIX, chunk, "t", take)
  if f == nil and not load(PREFIX .. code, chunk, "t", take) then
    -- a message about the user's code, not about our suffix
    f, err = load(PREFIX .. code, chunk, "t", take)
  end
  if f then return f end
  return nil, err
end
function H.encode(v)
  local data = encode(v, "result")
  if data == nil then return nil, conv_msg end
  return data
end
-- Closing a task's thread runs its pending __close handlers: with a fresh budget (the host
-- restarts the clock), checked as usual; one that overruns it is stopped and the next one
-- still runs (closing goes on whatever the handlers raise).
-- closing is set inside the protected call and put back after it, whatever happened: in a
-- VM at its memory limit the call into pcall, or sethook, can fail for memory, and a mark
-- left set kept the next over-budget task from being killed again outside its catch.
-- Returns the error, then true when the thread could not be closed (no memory for it).
local function close_now(co)
  closing = true
  if COUNT > 0 then sethook(co, hook, "", COUNT) end
  local _, _, e = pcall(co_close, co)
  return e
end
local function close_task(co)
  killed = false
  local ok, e = pcall(close_now, co)
  killed, closing = false, false
  if not ok then return nil, true end
  return e  -- the error the thread died with (or one a handler raised)
end
function H.fail_info(co)
  local tb = traceback(co)
  local was_killed = killed
  local e, full = close_task(co)
  if full then return nil end  -- the host says it ran out of memory
  was_killed = was_killed or rawequal(e, KILL)
  local te, msg, data = type(e), nil, nil
  if te == "string" then msg = e
  elseif te == "number" then msg = tostring(e); data = encode(e, "error")
  else
    msg = "(error object is a " .. te .. " value)"
    if te == "table" or te == "boolean" then data = encode(e, "error") end  -- kept as data
  end
  return was_killed, msg, tb, data
end
function H.drop(co)
  local _, full = close_task(co)
  return full
end
-- H.batch(rounds, co1, co2, ...): resume task threads (each resumed by the host before,
-- none owed an answer) in ring order, one pass, or round after round if rounds (the
-- host has nothing else to run), while they sleep 0 (yield nothing and stay suspended)
-- or return; it stops after a resume that did anything else (a request, an error, a
-- kill) or made a host call, after a hook call (a task computed for a while), and when
-- the host's h_due() says its quantum is over (asked every 64 resumes, after one
-- pass). A spell.sleep(0) then costs a Lua coroutine.resume, not a crossing from
-- Python into Lua and back. Returns n (resumes made), the pass it ended in
-- (from 1), the slot of its last resume, and a table of the returns (slot, pass, first
-- value; 3 entries each) with its length; then, when the last resume did something else,
-- true and what coroutine.resume returned.
-- What a resume that stops it yielded: at most five values (1, pattern, timeout: a
-- wait_event; 2, tasks, strategy, timeout, inputs: a coordinate; one value for the
-- others; USER first for the script's own yields, whose values are dropped).
local RING, BN, PASS, DONE, DN, CUR_I = nil, 0, 0, nil, 0, 0
function H.batch(rounds, ...)
  -- before anything that allocates: a batch out of memory at its first table must not
  -- hand H.batch_end the last batch's figures
  BN, PASS, CUR_I, DONE, DN = 0, 1, 0, nil, 0
  local ring, k = {...}, select("#", ...)
  local done, dn, pass, alive, n, i, last = {}, 0, 1, k, 0, 0, 0
  RING, DONE, DN, PASS, BN, CUR_I, BATCH_CO, HOOKED = ring, done, 0, 1, 0, 0, nil, false
  while true do
    i = i + 1
    if i > k then
      if not rounds or alive == 0 then break end
      pass, i = pass + 1, 1
      PASS = pass
    end
    local co = ring[i]
    if co then
      BATCH_CO, HOSTED, fresh = co, false, true
      n, last = n + 1, i
      BN, CUR_I = n, i
      local ok, a, b, c, d, e = co_resume(co)
      if not ok or killed or (a ~= nil and co_status(co) == "suspended") then
        BATCH_CO, RING = nil, nil
        return n, pass, i, done, dn, true, ok, a, b, c, d, e
      end
      if co_status(co) ~= "suspended" then  -- it returned: its first value to the host
        done[dn + 1], done[dn + 2], done[dn + 3] = i, pass, a
        dn = dn + 3
        DN = dn
        ring[i] = false
        alive = alive - 1
      end
      -- the quantum's end only after one pass: the host's work for a batch grows with
      -- the tasks it hands over, so a batch resumes each of them at least once
      if HOSTED or HOOKED or (n >= k and n & 63 == 0 and h_due()) then break end
    end
  end
  BATCH_CO, RING = nil, nil
  return n, pass, last, done, dn
end
-- after an error out of H.batch (memory): as it would have returned, up to the resume it
-- was in (or 0, nothing begun)
function H.batch_end()
  local done = DONE
  BATCH_CO, RING, DONE = nil, nil, nil
  return BN, PASS, CUR_I, done, DN
end
function H.count() return collectgarbage("count") end
function H.gc() collectgarbage("collect") end

-- nothing outside this chunk may reach the unsafe parts of the real globals
for _, k in next, {"io", "os", "debug", "package", "require", "dofile", "loadfile",
                   "load", "python", "collectgarbage", "string", "warn"} do
  G[k] = nil
end
return H
