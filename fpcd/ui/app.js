// fpcd console: plain JavaScript, no framework, no build step, nothing from elsewhere.
//
// Safety rule of this file: user data (configuration values, flag payloads, names,
// descriptions, audit details) only ever becomes text nodes or attribute values through
// h()/s() below. Nothing here parses HTML (no innerHTML, no insertAdjacentHTML), and the
// Content-Security-Policy forbids inline script anyway.
'use strict';

(() => {
  // -- DOM ------------------------------------------------------------------------------

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'readOnly', 'open', 'indeterminate']);

  function append(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(el, child);
      else if (child instanceof Node) el.appendChild(child);
      else el.appendChild(document.createTextNode(String(child)));
    }
  }

  function build(el, attrs, children) {
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null || value === false) continue;
        if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
        else if (PROPS.has(key)) el[key] = value;
        else el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    append(el, children);
    return el;
  }

  /** Replace an element's children (arrays flattened, strings as text). */
  function put(el, ...children) {
    el.replaceChildren();
    append(el, children);
    return el;
  }

  /** An HTML element; strings among the children become text nodes. */
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  /** An SVG element, the same way. */
  const s = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

  const byId = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  let uid = 0;
  const nextId = (prefix) => `${prefix}-${++uid}`;

  /** A labelled form control: the label's `for` names the control. */
  function field(label, control, hint) {
    if (!control.id) control.id = nextId('f');
    return h('div', { class: 'field' }, h('label', { for: control.id }, label), control,
      hint ? h('span', { class: 'muted' }, hint) : null);
  }

  function sortKeys(value) {
    if (Array.isArray(value)) return value.map(sortKeys);
    if (value && typeof value === 'object') {
      const out = {};
      for (const key of Object.keys(value).sort()) out[key] = sortKeys(value[key]);
      return out;
    }
    return value;
  }
  const pretty = (value) => JSON.stringify(sortKeys(value), null, 2);
  const compact = (value) => JSON.stringify(value);

  function when(iso) {
    if (!iso) return '—';
    const date = new Date(typeof iso === 'number' ? iso * 1000 : iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }
  const timeEl = (iso) => (iso ? h('time', { datetime: String(iso) }, when(iso)) : '—');
  const short = (text, n = 12) => (text && text.length > n ? `${text.slice(0, n)}…` : text || '');

  function globMatch(pattern, name) {
    let re = '^';
    for (const ch of pattern) {
      if (ch === '*') re += '.*';
      else if (ch === '?') re += '.';
      else re += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    return new RegExp(`${re}$`).test(name);
  }

  // -- the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem, headers) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
      this.headers = headers || new Headers();
    }
    get errors() { return Array.isArray(this.problem.errors) ? this.problem.errors : []; }
  }

  const session = { me: null, anonymous: null };

  async function api(method, path, body, headers, retried) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...(headers || {}) } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    if (method !== 'GET' && session.me && session.me.csrfToken) init.headers['X-CSRF-Token'] = session.me.csrfToken;
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, { detail: 'the daemon cannot be reached' });
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (error) { data = { detail: text }; }
    }
    if (!response.ok) {
      const error = new ApiError(response.status, data, response.headers);
      // The daemon restarted (a new CSRF key): fetch the session's token again, once.
      if (response.status === 403 && !retried && /X-CSRF-Token/.test(error.message) && session.me) {
        await loadSession();
        return api(method, path, body, headers, true);
      }
      if (response.status === 401 && !path.startsWith('/ui/session')) signedOut(error.message);
      throw error;
    }
    return { data, etag: response.headers.get('ETag'), status: response.status };
  }

  async function loadSession(again) {
    try {
      const { data } = await api('GET', '/ui/session');
      session.me = data;
      if (!data.signedIn) session.anonymous = data;
      return data;
    } catch (error) {
      if (error.status === 401) {
        session.me = null;
        // A cookie with a bad token was just cleared: ask once more (anonymous access may apply).
        return again || error.headers.get('X-Fpcd-Session') !== 'cleared' ? null : loadSession(true);
      }
      throw error;
    }
  }

  const SERVICE_SCOPED = new Set(['config:read', 'config:write', 'schema:write', 'config:reload',
    'secrets:list', 'secrets:write', 'secrets:read', 'registry:write']);

  /** What the server will decide, told in advance so controls can say so (the server still decides). */
  function can(action, service, environment) {
    const me = session.me;
    if (!me || !me.actions.includes(action)) return false;
    if (service && SERVICE_SCOPED.has(action)) {
      let patterns = me.services;
      if (patterns === null && me.roles.length && me.roles.every((r) => r === 'service') && !me.scopes.includes('*')) patterns = [];
      if (patterns !== null && !patterns.some((p) => globMatch(p, service))) return false;
    }
    if (environment && me.environments !== null && !me.environments.some((p) => globMatch(p, environment))) return false;
    return true;
  }

  // -- messages ---------------------------------------------------------------------------

  function toast(text, bad) {
    const box = byId('toasts');
    if (!box) return;
    const item = h('div', { class: bad ? 'toast bad' : 'toast' }, text);
    box.appendChild(item);
    setTimeout(() => item.remove(), bad ? 8000 : 4000);
  }

  /** A refused request, with each field error at its path. */
  function problemBox(error, heading) {
    const errors = error instanceof ApiError ? error.errors : [];
    return h('div', { class: 'error', role: 'alert' },
      h('strong', null, heading || (error.problem && error.problem.title) || 'Error'),
      ': ', error.message,
      errors.length ? h('ul', { class: 'field-errors' }, errors.map((e) =>
        h('li', null, h('code', { class: 'path' }, e.path), ' ', h('span', { class: 'message' }, e.message)))) : null);
  }

  function refusedNote(what) {
    return h('p', { class: 'notice' }, `Read-only: your token does not allow ${what}.`);
  }

  /** A modal question; resolves true when confirmed. Focus returns where it was. */
  function confirmDialog({ title, message, confirm, danger }) {
    return new Promise((resolve) => {
      const before = document.activeElement;
      const titleId = nextId('dlg');
      const ok = h('button', { type: 'button', class: danger ? 'danger' : 'primary' }, confirm);
      const cancel = h('button', { type: 'button' }, 'Cancel');
      const dialog = h('dialog', { 'aria-labelledby': titleId },
        h('h2', { id: titleId }, title), h('p', { class: 'dialog-message' }, message),
        h('div', { class: 'actions' }, cancel, ok));
      const finish = (answer) => {
        dialog.close();
        dialog.remove();
        if (before && before.focus) before.focus();
        resolve(answer);
      };
      ok.addEventListener('click', () => finish(true));
      cancel.addEventListener('click', () => finish(false));
      dialog.addEventListener('cancel', (event) => { event.preventDefault(); finish(false); });
      document.body.appendChild(dialog);
      dialog.showModal();
      cancel.focus();
    });
  }

  // -- diff (side by side) -----------------------------------------------------------------

  /** Myers' O(ND) line diff: a list of ['=', i, j], ['-', i, -1], ['+', -1, j]. */
  function diffLines(a, b) {
    const n = a.length;
    const m = b.length;
    const max = n + m;
    if (max > 40000) return [...a.map((_, i) => ['-', i, -1]), ...b.map((_, j) => ['+', -1, j])];
    const v = new Int32Array(2 * max + 2);
    const trace = [];
    for (let d = 0; d <= max; d++) {
      trace.push(v.slice());
      for (let k = -d; k <= d; k += 2) {
        let x = (k === -d || (k !== d && v[max + k - 1] < v[max + k + 1])) ? v[max + k + 1] : v[max + k - 1] + 1;
        let y = x - k;
        while (x < n && y < m && a[x] === b[y]) { x++; y++; }
        v[max + k] = x;
        if (x >= n && y >= m) return backtrack(trace, n, m, max);
      }
    }
    return [];
  }

  function backtrack(trace, n, m, max) {
    const ops = [];
    let x = n;
    let y = m;
    for (let d = trace.length - 1; d >= 0; d--) {
      const v = trace[d];
      const k = x - y;
      const prevK = (k === -d || (k !== d && v[max + k - 1] < v[max + k + 1])) ? k + 1 : k - 1;
      const prevX = v[max + prevK];
      const prevY = prevX - prevK;
      while (x > prevX && y > prevY) { ops.push(['=', x - 1, y - 1]); x--; y--; }
      if (d > 0) ops.push(x === prevX ? ['+', -1, y - 1] : ['-', x - 1, -1]);
      x = prevX;
      y = prevY;
    }
    return ops.reverse();
  }

  /** Rows of a side-by-side view: removed and added runs paired line by line. */
  function sideBySide(a, b) {
    const rows = [];
    let dels = [];
    let adds = [];
    const flush = () => {
      for (let i = 0; i < Math.max(dels.length, adds.length); i++) rows.push([dels[i] ?? null, adds[i] ?? null, 'change']);
      dels = [];
      adds = [];
    };
    for (const [op, i, j] of diffLines(a, b)) {
      if (op === '=') { flush(); rows.push([i, j, 'same']); } else if (op === '-') dels.push(i); else adds.push(j);
    }
    flush();
    return rows;
  }

  function diffView(leftLabel, leftValue, rightLabel, rightValue) {
    const a = leftValue === undefined ? [] : pretty(leftValue).split('\n');
    const b = rightValue === undefined ? [] : pretty(rightValue).split('\n');
    const rows = sideBySide(a, b);
    const removed = rows.filter((r) => r[2] === 'change' && r[0] !== null).length;
    const added = rows.filter((r) => r[2] === 'change' && r[1] !== null).length;
    const cell = (index, lines, kind) => {
      if (index === null) return [h('td', { class: 'ln' }), h('td', { class: 'empty' })];
      const marker = kind === 'same' ? null : h('span', { class: 'visually-hidden' }, kind === 'del' ? 'removed: ' : 'added: ');
      return [h('td', { class: 'ln' }, index + 1), h('td', { class: kind === 'same' ? '' : kind }, marker, lines[index])];
    };
    return h('div', { class: 'diff-wrap' },
      h('p', { class: 'diff-summary' }, removed || added
        ? `${removed} line${removed === 1 ? '' : 's'} removed, ${added} added`
        : 'No differences'),
      h('div', { class: 'table-wrap' },
        h('table', { class: 'diff', 'aria-label': `Differences between ${leftLabel} and ${rightLabel}` },
          h('colgroup', null, h('col', { class: 'ln' }), h('col'), h('col', { class: 'ln' }), h('col')),
          h('thead', null, h('tr', null, h('th', { colspan: 2, scope: 'col' }, leftLabel), h('th', { colspan: 2, scope: 'col' }, rightLabel))),
          h('tbody', null, rows.map(([i, j, kind]) => h('tr', null,
            cell(i, a, kind === 'same' ? 'same' : 'del'), cell(j, b, kind === 'same' ? 'same' : 'add')))))));
  }

  /** Two versions picked from a list (radio buttons A and B), and their diff below. */
  function versionCompare(entries, labelOf, valueOf, onPick) {
    const state = { a: entries.length > 1 ? entries[1] : entries[0], b: entries[0] };
    const out = h('div', { class: 'compare' });
    const render = () => {
      put(out, diffView(labelOf(state.a), valueOf(state.a), labelOf(state.b), valueOf(state.b)));
    };
    const radios = (entry) => ['a', 'b'].map((side) => h('td', null, h('input', {
      type: 'radio', name: `compare-${side}`, checked: state[side] === entry,
      'aria-label': `Compare ${labelOf(entry)} as ${side.toUpperCase()}`,
      onchange: () => { state[side] = entry; render(); if (onPick) onPick(state); },
    })));
    if (entries.length) render();
    return { radios, out };
  }

  // -- chart (inline SVG) ----------------------------------------------------------------

  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#d62728'];

  function stackedBars(days, series, colors, label) {
    const width = Math.max(360, days.length * 26 + 70);
    const height = 240;
    const pad = { left: 48, right: 10, top: 12, bottom: 44 };
    const plotH = height - pad.top - pad.bottom;
    const totals = days.map((d) => series.reduce((sum, name) => sum + (d.values[name] || 0), 0));
    const max = Math.max(1, ...totals);
    const band = (width - pad.left - pad.right) / Math.max(1, days.length);
    const bar = Math.max(4, Math.min(22, band * 0.7));
    const y = (value) => pad.top + plotH - (value / max) * plotH;
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label });
    for (const value of [...new Set([0, Math.round(max / 2), max])]) {
      svg.appendChild(s('line', { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value) }));
      svg.appendChild(s('text', { x: pad.left - 6, y: y(value) + 4, 'text-anchor': 'end' }, value));
    }
    const every = Math.max(1, Math.ceil(days.length / 12));
    days.forEach((day, i) => {
      const x = pad.left + i * band + (band - bar) / 2;
      let base = 0;
      for (const name of series) {
        const value = day.values[name] || 0;
        if (!value) continue;
        svg.appendChild(s('rect', { x, y: y(base + value), width: bar, height: Math.max(0.5, y(base) - y(base + value)), fill: colors[name] },
          s('title', null, `${day.date} ${name}: ${value}`)));
        base += value;
      }
      if (i % every === 0) {
        svg.appendChild(s('text', { x: x + bar / 2, y: height - pad.bottom + 16, 'text-anchor': 'middle' }, day.date.slice(5)));
      }
    });
    return svg;
  }

  // -- live updates over the daemon's WebSocket --------------------------------------------

  const FLAG_STREAM = 'fpcd-console';
  const live = {
    ws: null, wanted: new Map(), active: new Map(), retry: 0, stopped: true, timer: null,

    start() {
      this.stopped = false;
      if (!this.ws) this.connect();
    },
    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.ws) this.ws.close(1000);
      this.ws = null;
    },
    connect() {
      const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
      const ws = new WebSocket(url);
      this.ws = ws;
      ws.addEventListener('open', () => {
        this.retry = 0;
        this.active.clear();
        setLive(true);
        this.sync();
      });
      ws.addEventListener('message', (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch (error) { return; }
        if (current && current.onLive) current.onLive(message);
      });
      ws.addEventListener('close', (event) => {
        if (this.ws === ws) this.ws = null;
        setLive(false);
        if (this.stopped) return;
        if (event.code === 4401) { loadSession().then((me) => { if (!me) signedOut('your token expired'); }); }
        const delay = Math.min(8000, 200 * 2 ** this.retry++);
        this.timer = setTimeout(() => { if (!this.stopped) this.connect(); }, delay);
      });
    },
    /** The streams the page wants; the flag stream is always kept. */
    want(streams) {
      const all = [...streams];
      const me = session.me;
      if (me && me.actions.includes('flags:read')) {
        // Flag messages are not tied to a stream's service; its environment must be one the token may read.
        const allowed = (env) => me.environments === null || me.environments.some((p) => globMatch(p, env));
        const environment = [me.defaultEnvironment, ...me.knownEnvironments].find(allowed);
        if (environment) all.push({ serviceName: FLAG_STREAM, environment, subscriptions: ['feature-flags'] });
      }
      this.wanted = new Map(all.map((st) => [`${st.serviceName}\u0000${st.environment}`, st]));
      this.sync();
    },
    send(message) { this.ws.send(JSON.stringify(message)); },
    sync() {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      for (const [key, st] of [...this.active]) {
        if (!this.wanted.has(key)) {
          this.send({ type: 'UNSUBSCRIBE', serviceName: st.serviceName, environment: st.environment });
          this.active.delete(key);
        }
      }
      for (const [key, st] of this.wanted) {
        if (!this.active.has(key)) {
          this.send({ type: 'SUBSCRIBE', ...st });
          this.active.set(key, st);
        }
      }
    },
  };

  function setLive(on) {
    const badge = byId('live');
    if (!badge) return;
    badge.className = on ? 'live on' : 'live off';
    badge.textContent = on ? 'Live' : 'Offline';
    badge.title = on ? 'Changes appear as they happen' : 'Reconnecting to the daemon…';
  }

  // -- the page shell and routing ---------------------------------------------------------

  const NAV = [['configs', 'Configuration'], ['flags', 'Flags'], ['secrets', 'Secrets'], ['services', 'Services'], ['audit', 'Audit log']];
  let current = null;

  function roleText(me) {
    const roles = me.roles.length ? me.roles.join(', ') : 'no role';
    return me.services ? `${roles}; services ${me.services.join(', ')}` : roles;
  }

  function renderShell() {
    const me = session.me;
    put(document.body,
      h('a', { class: 'skip', href: '#', onclick: (e) => { e.preventDefault(); byId('main').focus(); } }, 'Skip to content'),
      h('header', { class: 'top' },
        h('a', { class: 'brand', href: '#/configs' }, h('img', { src: '/ui/icon.svg', alt: '', width: 24, height: 24 }), 'fpcd'),
        h('nav', { 'aria-label': 'Main' }, h('ul', null, NAV.map(([route, text]) =>
          h('li', null, h('a', { href: `#/${route}`, 'data-route': route }, text))))),
        h('div', { class: 'who' },
          h('span', { id: 'live', class: 'live off' }, 'Offline'),
          h('span', { id: 'whoami' }, h('span', { class: 'subject' }, me.subject), ` (${roleText(me)})`),
          me.signedIn
            ? h('button', { type: 'button', onclick: signOut }, 'Sign out')
            : (me.authEnabled ? h('a', { href: '#/signin' }, 'Sign in') : null))),
      h('main', { id: 'main', tabindex: '-1' }),
      h('div', { id: 'toasts', class: 'toasts', role: 'status', 'aria-live': 'polite' }));
    live.start();
  }

  const VIEWS = {};

  async function route(fromUser) {
    const decode = (part) => { try { return decodeURIComponent(part); } catch (error) { return part; } };
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decode);
    const name = parts[0] || 'configs';
    if (name === 'signin' || !session.me) { showSignIn(); return; }
    if (!document.querySelector('header.top')) renderShell(); // first view, or back from sign-in
    if (current && current.unmount) current.unmount();
    for (const link of document.querySelectorAll('.top nav a')) {
      if (link.dataset.route === name) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
    }
    const main = byId('main');
    // Each view draws into its own box: one still loading when the next is opened
    // draws into a detached box, never over its successor.
    const box = h('div', { class: 'view' });
    put(main, box);
    const View = VIEWS[name] || VIEWS.configs;
    const view = new View(box, parts.slice(1));
    current = view;
    live.want([]);
    try {
      await view.mount();
    } catch (error) {
      if (current === view) put(box, problemBox(error));
    }
    document.title = `${view.title || 'fpcd'} · fpcd console`;
    ready();
    if (fromUser && current === view) {
      const heading = main.querySelector('h1');
      if (heading) { heading.tabIndex = -1; heading.focus(); }
    }
  }

  function go(hash) {
    if (location.hash === hash) route(true); else location.hash = hash;
  }

  // -- sign-in ------------------------------------------------------------------------------

  function showSignIn(message, calm) {
    live.stop();
    if (current && current.unmount) current.unmount();
    current = null;
    const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
    const error = h('div', { id: 'signin-error' });
    if (message) put(error, h('p', { class: calm ? 'notice' : 'error', role: calm ? 'status' : 'alert' }, message));
    const anonymous = session.anonymous;
    const form = h('form', {
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const { data } = await api('POST', '/ui/session', { token: input.value.trim() });
          session.me = data;
          input.value = '';
          if (!location.hash || location.hash === '#/signin') history.replaceState(null, '', '#/configs');
          put(document.body);
          route(false);
        } catch (err) {
          put(error, problemBox(err, 'Sign-in refused'));
          input.focus();
        }
      },
    },
    h('h1', null, 'Sign in to fpcd'),
    h('p', { class: 'muted' }, 'Paste an fpcd token (fpcd token create makes one; the first start writes fpcd-data/admin.token). The console keeps it in an HttpOnly cookie and acts with exactly its rights.'),
    error,
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'Token'), input),
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
      anonymous ? h('a', { href: '#/configs', onclick: (e) => { e.preventDefault(); session.me = anonymous; put(document.body); go('#/configs'); } },
        `Continue without a token (${anonymous.roles.join(', ')})`) : null));
    put(document.body, h('main', { id: 'main', class: 'signin' }, form));
    document.title = 'Sign in · fpcd console';
    input.focus();
    ready();
  }

  function signedOut(message) {
    session.me = null;
    loadSession().then((me) => {
      if (me && !me.signedIn) { session.me = me; put(document.body); route(false); } else showSignIn(message);
    });
  }

  async function signOut() {
    try {
      await api('DELETE', '/ui/session');
    } catch (error) {
      toast(`Not signed out: ${error.message}`, true);
      return;
    }
    session.me = null;
    live.stop();
    const me = await loadSession();
    put(document.body);
    if (me) route(false); else showSignIn('Signed out.', true);
  }

  // -- configuration ------------------------------------------------------------------------

  const BASE = 'default';

  async function getOrNull(path) {
    try { return await api('GET', path); } catch (error) { if (error.status === 404) return null; throw error; }
  }

  /** Leaf paths of an object: [[['db','host'], value], ...]. */
  function leaves(value, path = [], out = []) {
    if (value && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length) {
      for (const key of Object.keys(value).sort()) leaves(value[key], [...path, key], out);
    } else if (path.length) out.push([path, value]);
    return out;
  }
  function hasPath(value, path) {
    let node = value;
    for (const key of path) {
      if (!node || typeof node !== 'object' || Array.isArray(node) || !(key in node)) return false;
      node = node[key];
    }
    return true;
  }
  const showPath = (path) => path.map((k) => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? k : JSON.stringify(k))).join('.');

  VIEWS.configs = class ConfigsView {
    constructor(root, args) {
      this.root = root;
      [this.service, this.env, this.tab] = args;
      this.tab = this.tab || 'effective';
      this.title = 'Configuration';
      this.dirty = false;
    }

    async mount() {
      // With the environment in the address, the service's documents load alongside the list.
      const early = this.service && this.env ? this.load() : null;
      if (early) early.catch(() => {}); // awaited below; not "unhandled" if the list fails first
      const { data } = await api('GET', '/api/config');
      this.services = data.items;
      if (this.service && !this.env) {
        const item = this.services.find((i) => i.serviceName === this.service);
        const envs = item ? item.environments.map((e) => e.name) : [];
        this.env = envs.find((e) => e !== BASE) || envs[0] || session.me.defaultEnvironment;
        history.replaceState(null, '', `#/configs/${enc(this.service)}/${enc(this.env)}`);
      }
      this.sidebar = h('nav', { class: 'services-nav panel', 'aria-label': 'Services' });
      this.detail = h('section', { class: 'detail', 'aria-live': 'off' });
      put(this.root, h('div', { class: 'split' }, this.sidebar, this.detail));
      this.renderSidebar();
      if (!this.service) {
        put(this.detail, h('h1', null, 'Configuration'),
          h('p', null, this.services.length ? 'Choose a service and an environment.' : 'No configuration is stored yet (or none your token may read).'));
        return;
      }
      this.title = `${this.service}/${this.env}`;
      await (early || this.load());
      await this.render();
      if (current === this) live.want([{ serviceName: this.service, environment: this.env, subscriptions: ['config-updates'] }]);
    }

    renderSidebar() {
      const filter = h('input', { type: 'search', id: 'service-filter', placeholder: 'name', value: this.filterText || '' });
      const list = h('ul');
      const fill = () => {
        const q = filter.value.trim().toLowerCase();
        put(list, ...this.services.filter((i) => i.serviceName.toLowerCase().includes(q)).map((item) =>
          h('li', null,
            h('a', { href: `#/configs/${enc(item.serviceName)}`, class: 'service-link', 'aria-current': item.serviceName === this.service ? 'true' : null }, item.serviceName),
            h('div', { class: 'envs' }, item.environments.map((e) => h('a', {
              href: `#/configs/${enc(item.serviceName)}/${enc(e.name)}`,
              'aria-current': item.serviceName === this.service && e.name === this.env ? 'page' : null,
              'aria-label': `${item.serviceName} ${e.name} (version ${e.version})`,
            }, `${e.name} v${e.version}`))))));
        if (!list.children.length) list.appendChild(h('li', { class: 'muted' }, 'No services'));
      };
      filter.addEventListener('input', () => { this.filterText = filter.value; fill(); });
      fill();
      const name = h('input', { id: 'new-service', pattern: '[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}', required: true });
      const env = h('select', { id: 'new-service-env' }, session.me.knownEnvironments.map((e) =>
        h('option', { value: e, selected: e === session.me.defaultEnvironment }, e)));
      put(this.sidebar,
        h('h2', null, 'Services'), field('Filter services', filter), list,
        h('form', { class: 'open-service', onsubmit: (e) => { e.preventDefault(); go(`#/configs/${enc(name.value.trim())}/${enc(env.value)}/edit`); } },
          h('h3', null, 'Open or create'), field('Service', name), field('Environment', env),
          h('button', { type: 'submit' }, 'Open')));
    }

    async load() {
      const svc = enc(this.service);
      const env = enc(this.env);
      const [effective, layer, base, schema] = await Promise.all([
        getOrNull(`/api/config/${svc}?environment=${env}`),
        getOrNull(`/api/config/${svc}?environment=${env}&raw=true`),
        this.env === BASE ? null : getOrNull(`/api/config/${svc}?environment=${BASE}&raw=true`),
        getOrNull(`/api/config/${svc}/schema`),
      ]);
      this.effective = effective && effective.data;
      this.layer = layer && layer.data;
      this.base = base && base.data;
      this.schema = schema && schema.data;
      this.signature = compact([this.effective && this.effective.checksum, this.layer && this.layer.version, this.base && this.base.version, this.schema && this.schema.version]);
    }

    render() {
      const tabs = [['effective', 'Effective'], ['layers', 'Layers'], ['history', 'History'], ['edit', 'Edit'], ['schema', 'Schema']];
      const base = `#/configs/${enc(this.service)}/${enc(this.env)}`;
      const known = new Set(session.me.knownEnvironments);
      const item = this.services.find((i) => i.serviceName === this.service);
      if (item) for (const e of item.environments) known.add(e.name);
      const envSelect = h('select', { id: 'env-select', onchange: () => go(`#/configs/${enc(this.service)}/${enc(envSelect.value)}/${this.tab}`) },
        [...known].sort().map((e) => h('option', { value: e, selected: e === this.env }, e)));
      this.body = h('div', { class: 'tab-body' });
      put(this.detail,
        h('h1', null, `${this.service} / ${this.env}`),
        h('div', { class: 'row' }, field('Environment', envSelect)),
        h('nav', { class: 'tabs', 'aria-label': 'Configuration views' }, tabs.map(([key, text]) =>
          h('a', { href: `${base}/${key}`, 'aria-current': key === this.tab ? 'page' : null }, text))),
        this.body);
      const renderers = { effective: this.renderEffective, layers: this.renderLayers, history: this.renderHistory, edit: this.renderEdit, schema: this.renderSchema };
      return (renderers[this.tab] || this.renderEffective).call(this);
    }

    renderEffective() {
      const doc = this.effective;
      if (!doc) {
        put(this.body, h('p', null, `Nothing stored for ${this.service} in ${this.env} or default yet.`),
          can('config:write', this.service, this.env) ? h('a', { href: `#/configs/${enc(this.service)}/${enc(this.env)}/edit` }, 'Write the first version') : null);
        return;
      }
      const layer = this.layer ? this.layer.config : {};
      const fromLayer = (path) => (this.env !== BASE && this.layer && hasPath(layer, path) ? this.env : BASE);
      const rows = leaves(doc.config).map(([path, value]) => {
        const from = this.env === BASE ? BASE : fromLayer(path);
        const version = from === BASE ? (this.env === BASE ? doc.version : doc.baseVersion) : doc.version;
        return h('tr', null,
          h('th', { scope: 'row' }, h('code', null, showPath(path))),
          h('td', null, h('code', { class: 'value' }, compact(value))),
          h('td', { class: from === BASE ? 'layer-default' : 'layer-env' }, `${from}${version ? ` v${version}` : ''}`));
      });
      const secrets = Object.entries(doc.secrets || {});
      put(this.body,
        h('dl', { class: 'facts' },
          h('dt', null, 'Version'), h('dd', { id: 'effective-version' }, this.env === BASE ? `${doc.version}`
            : (doc.version ? `${doc.version} over default ${doc.baseVersion ?? '—'}` : `no ${this.env} layer: default ${doc.baseVersion}`)),
          h('dt', null, 'Checksum'), h('dd', null, h('code', { title: doc.checksum }, short(doc.checksum, 16))),
          h('dt', null, 'Written'), h('dd', null, timeEl(doc.createdAt), doc.createdBy ? ` by ${doc.createdBy}` : ''),
          doc.description ? [h('dt', null, 'Description'), h('dd', null, doc.description)] : null),
        h('div', { class: 'table-wrap' }, h('table', { id: 'effective-values' },
          h('caption', null, 'Effective values and the layer each comes from'),
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Key'), h('th', { scope: 'col' }, 'Value'), h('th', { scope: 'col' }, 'Layer'))),
          h('tbody', null, rows.length ? rows : h('tr', null, h('td', { colspan: 3 }, 'The configuration is empty.'))))),
        secrets.length ? [h('h2', null, 'Secrets'), h('ul', null, secrets.map(([name, meta]) =>
          h('li', null, h('code', null, name), ` version ${meta.version}`, meta.expiresAt ? `, expires ${when(meta.expiresAt)}` : '')))] : null,
        h('details', null, h('summary', null, 'Effective JSON'), h('pre', { class: 'json' }, pretty(doc.config))));
    }

    renderLayers() {
      const card = (name, doc) => h('section', { class: 'panel' },
        h('h2', null, `${name} layer`),
        doc ? [h('p', { class: 'muted' }, `Version ${doc.version}, written `, timeEl(doc.createdAt), doc.createdBy ? ` by ${doc.createdBy}` : '',
          doc.description ? ` — ${doc.description}` : ''), h('pre', { class: 'json' }, pretty(doc.config))]
          : h('p', { class: 'muted' }, 'No version stored.'));
      put(this.body, this.env === BASE ? card(BASE, this.layer) : [card(this.env, this.layer), card(BASE, this.base)]);
    }

    async renderHistory() {
      const { data } = await api('GET', `/api/config/${enc(this.service)}/history?environment=${enc(this.env)}&limit=200`);
      const entries = data.items;
      if (!entries.length) { put(this.body, h('p', null, 'No versions in this environment yet.')); return; }
      const head = entries[0].version;
      const label = (e) => `version ${e.version}`;
      const compare = versionCompare(entries, label, (e) => e.config);
      const writable = can('config:write', this.service, this.env);
      const rows = entries.map((entry) => h('tr', null,
        compare.radios(entry),
        h('td', { class: 'num' }, entry.version),
        h('td', null, timeEl(entry.createdAt)),
        h('td', null, entry.createdBy || ''),
        h('td', { class: 'hide-narrow' }, entry.description || ''),
        h('td', { class: 'hide-narrow' }, h('code', { title: entry.checksum }, short(entry.checksum, 10))),
        h('td', null, entry.version === head ? h('span', { class: 'muted' }, 'current') : h('button', {
          type: 'button', disabled: !writable, onclick: () => this.rollback(head, entry.version),
        }, `Roll back to version ${entry.version}`))));
      put(this.body,
        writable ? null : refusedNote(`changes to ${this.service}/${this.env}`),
        h('div', { class: 'table-wrap' }, h('table', { id: 'history' },
          h('caption', null, `History of ${this.service}/${this.env}${data.total > entries.length ? ` (newest ${entries.length} of ${data.total})` : ''}`),
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'A'), h('th', { scope: 'col' }, 'B'), h('th', { scope: 'col', class: 'num' }, 'Version'),
            h('th', { scope: 'col' }, 'Written'), h('th', { scope: 'col' }, 'By'), h('th', { scope: 'col', class: 'hide-narrow' }, 'Description'),
            h('th', { scope: 'col', class: 'hide-narrow' }, 'Checksum'), h('th', { scope: 'col' }, 'Action'))),
          h('tbody', null, rows))),
        h('h2', null, 'Compare versions'), compare.out);
    }

    async rollback(head, target) {
      const where = `${this.service}/${this.env}`;
      const ok = await confirmDialog({
        title: 'Roll back?',
        message: `Roll back ${where} from version ${head} to version ${target}? A new version is written with the content of version ${target}; history is kept.`,
        confirm: `Roll back to version ${target}`,
        danger: true,
      });
      if (!ok) return;
      try {
        const { data } = await api('POST', `/api/config/${enc(this.service)}/rollback`, { environment: this.env, version: target }, { 'If-Match': `"${head}"` });
        toast(`Rolled back ${where}: version ${data.version} has the content of version ${target}.`);
        await this.refresh(true);
      } catch (error) {
        toast(error.status === 412 ? `Not rolled back: ${where} changed meanwhile (${error.message}).` : `Not rolled back: ${error.message}`, true);
        await this.refresh(true);
      }
    }

    renderEdit() {
      const writable = can('config:write', this.service, this.env);
      const layer = this.layer;
      const baseVersion = layer ? layer.version : 0;
      const text = h('textarea', { id: 'layer-json', rows: 18, spellcheck: 'false', readOnly: !writable }, '');
      text.value = pretty(layer ? layer.config : {});
      const description = h('input', { id: 'layer-description', maxlength: 1024, readOnly: !writable });
      const result = h('div', { id: 'edit-result', 'aria-live': 'polite' });
      this.editBase = baseVersion;
      this.dirty = false;
      text.addEventListener('input', () => { this.dirty = true; });
      const save = h('button', { type: 'submit', class: 'primary', disabled: !writable }, 'Save');
      const form = h('form', {
        id: 'edit-form',
        onsubmit: async (event) => {
          event.preventDefault();
          let config;
          try {
            config = JSON.parse(text.value);
          } catch (error) {
            put(result, h('div', { class: 'error', role: 'alert' }, h('strong', null, 'Not valid JSON'), ': ', error.message));
            return;
          }
          if (!config || typeof config !== 'object' || Array.isArray(config)) {
            put(result, h('div', { class: 'error', role: 'alert' }, 'A layer is a JSON object.'));
            return;
          }
          save.disabled = true;
          try {
            const { data } = await api('PUT', `/api/config/${enc(this.service)}`, { environment: this.env, config, description: description.value, tags: (this.layer && this.layer.tags) || [] },
              { 'If-Match': `"${this.editBase}"` });
            this.dirty = false;
            toast(data.changed ? `Saved ${this.service}/${this.env} version ${data.version}.` : 'No change: the layer already has this content.');
            put(result, h('p', { class: 'ok' }, data.changed ? `Saved as version ${data.version}.` : 'Unchanged.'));
            await this.load();
            this.editBase = this.layer ? this.layer.version : 0;
            baseNote.textContent = this.baseText();
          } catch (error) {
            if (error.status === 412) {
              const latest = await getOrNull(`/api/config/${enc(this.service)}?environment=${enc(this.env)}&raw=true`);
              const now = latest ? latest.data : null;
              put(result, h('div', { class: 'error', role: 'alert' },
                h('strong', null, 'Conflict'), `: ${this.service}/${this.env} changed since you loaded version ${this.editBase}`,
                now ? ` (it is at version ${now.version}, by ${now.createdBy || 'someone'})` : '',
                '. Nothing was overwritten; your text is kept. Compare, then load the latest and apply your change again.'),
                diffView(`version ${now ? now.version : '—'} (stored)`, now ? now.config : undefined, 'your edit', config),
                h('button', { type: 'button', onclick: () => { this.layer = now; this.renderEdit(); } }, 'Load the latest version'));
            } else {
              put(result, problemBox(error, error.status === 422 ? 'Refused' : null));
            }
          } finally {
            save.disabled = !writable;
          }
        },
      },
      field(`Layer JSON (${this.env})`, text),
      field('Description (optional)', description),
      h('div', { class: 'row' }, save,
        h('button', { type: 'button', disabled: !writable, onclick: () => { text.value = pretty(this.layer ? this.layer.config : {}); this.dirty = false; put(result); } }, 'Reset')),
      result);
      const baseNote = h('p', { class: 'muted', id: 'edit-base' }, this.baseText());
      this.newer = h('div', { id: 'edit-newer', 'aria-live': 'polite' });
      put(this.body,
        writable ? null : refusedNote(`changes to ${this.service}/${this.env}`),
        baseNote, this.newer,
        this.schema ? h('p', { class: 'muted' }, 'Checked against the service\'s JSON Schema (see the Schema tab) when saved.') : null,
        form);
    }

    baseText() {
      return this.editBase ? `Editing version ${this.editBase} (sent as If-Match "${this.editBase}": a concurrent change is refused, never overwritten).`
        : 'No version yet: saving writes version 1.';
    }

    renderSchema() {
      const writable = can('schema:write', this.service, BASE);
      const text = h('textarea', { id: 'schema-json', rows: 16, spellcheck: 'false', readOnly: !writable });
      text.value = this.schema ? pretty(this.schema.schema) : '{\n  "type": "object"\n}';
      const result = h('div', { 'aria-live': 'polite' });
      const save = async (schema) => {
        try {
          if (schema === null) await api('DELETE', `/api/config/${enc(this.service)}/schema`);
          else await api('PUT', `/api/config/${enc(this.service)}/schema`, { schema });
          toast(schema === null ? 'Schema removed.' : 'Schema saved.');
          await this.refresh(true);
        } catch (error) {
          put(result, problemBox(error));
        }
      };
      put(this.body,
        this.schema ? h('p', { class: 'muted' }, `Schema version ${this.schema.version}, updated `, timeEl(this.schema.updatedAt), ` by ${this.schema.updatedBy}. It binds every environment.`)
          : h('p', null, `${this.service} has no schema: any JSON object is accepted.`),
        writable ? null : refusedNote(`schema changes for ${this.service}`),
        h('form', {
          onsubmit: (event) => {
            event.preventDefault();
            let schema;
            try { schema = JSON.parse(text.value); } catch (error) {
              put(result, h('div', { class: 'error', role: 'alert' }, `Not valid JSON: ${error.message}`));
              return;
            }
            save(schema);
          },
        }, field('JSON Schema', text), h('div', { class: 'row' },
          h('button', { type: 'submit', class: 'primary', disabled: !writable }, 'Save schema'),
          this.schema ? h('button', {
            type: 'button', class: 'danger', disabled: !writable,
            onclick: async () => { if (await confirmDialog({ title: 'Remove the schema?', message: `Remove the JSON Schema of ${this.service}? Writes are then no longer checked.`, confirm: 'Remove schema', danger: true })) save(null); },
          }, 'Remove schema') : null), result));
    }

    async refresh(force) {
      const before = this.signature;
      const [{ data }] = await Promise.all([api('GET', '/api/config'), this.load()]);
      if (compact(data.items) !== compact(this.services)) {
        this.services = data.items;
        const focused = document.activeElement && document.activeElement.id;
        this.renderSidebar();
        if (focused === 'service-filter') byId(focused).focus();
      }
      if (force || before !== this.signature) {
        if (this.tab === 'edit') {
          if (this.dirty && this.layer && this.layer.version !== this.editBase) {
            put(this.newer, h('p', { class: 'notice' }, `Version ${this.layer.version} was written after you loaded version ${this.editBase}; saving will be refused as a conflict.`));
            return;
          }
          if (this.dirty) return;
        }
        const focused = document.activeElement && document.activeElement.id;
        await this.render();
        if (focused && byId(focused)) byId(focused).focus();
      }
    }

    onLive(message) {
      if (message.type === 'CONFIGURATION_UPDATE' && message.serviceName === this.service && message.environment === this.env) {
        this.refresh(false);
      } else if (message.type === 'SUBSCRIBED' && message.serviceName === this.service) {
        this.refresh(false); // a change between the first read and the subscription
      }
    }
  };

  // -- flags -------------------------------------------------------------------------------

  function flagSwitch(flag, onToggle) {
    const on = Boolean(flag.enabled);
    return h('button', {
      type: 'button', role: 'switch', class: 'switch', 'aria-checked': String(on), 'aria-label': flag.key,
      'data-flag': flag.key, disabled: !can('flags:write') || flag.archived,
      title: can('flags:write') ? `Turn ${flag.key} ${on ? 'off' : 'on'}` : 'Your token may not change flags',
      onclick: (event) => onToggle(flag, event.currentTarget),
    }, h('span', { class: 'track', 'aria-hidden': 'true' }, h('span', { class: 'thumb' })),
    h('span', { class: 'state', 'aria-hidden': 'true' }, on ? 'On' : 'Off'));
  }

  async function toggleFlag(flag, button) {
    if (button.getAttribute('aria-busy') === 'true') return null; // one change at a time
    button.setAttribute('aria-busy', 'true');
    try {
      const { data } = await api('PATCH', `/api/features/${enc(flag.key)}`, { enabled: !flag.enabled }, { 'If-Match': `"${flag.version}"` });
      toast(`${flag.key} is ${data.enabled ? 'on' : 'off'} (version ${data.version}).`);
      return data;
    } catch (error) {
      toast(error.status === 412 ? `${flag.key} changed meanwhile; showing the latest.` : `Not changed: ${error.message}`, true);
      try { return (await api('GET', `/api/features/${enc(flag.key)}?includeArchived=true`)).data; } catch (e) { return flag; }
    } finally {
      button.removeAttribute('aria-busy');
    }
  }

  function replaceKeepingFocus(old, fresh) {
    const focused = document.activeElement;
    const key = focused && old.contains(focused) ? focused.getAttribute('data-focus') || focused.getAttribute('data-flag') : null;
    old.replaceWith(fresh);
    if (key) {
      const again = fresh.querySelector(`[data-focus="${CSS.escape(key)}"], [data-flag="${CSS.escape(key)}"]`);
      if (again) again.focus();
    }
  }

  VIEWS.flags = class FlagsView {
    constructor(root, args) {
      this.root = root;
      [this.key, this.tab] = args;
      this.tab = this.tab || 'definition';
      this.title = this.key ? `Flag ${this.key}` : 'Flags';
      this.rows = new Map();
    }

    mount() {
      return this.key ? this.mountDetail() : this.mountList();
    }

    // the list

    async mountList() {
      this.search = h('input', { type: 'search', id: 'flag-search', placeholder: 'key, name or description' });
      this.tag = h('select', { id: 'flag-tag' });
      this.archived = h('input', { type: 'checkbox', id: 'flag-archived' });
      this.tbody = h('tbody');
      this.count = h('p', { class: 'muted', id: 'flag-count' });
      for (const control of [this.search, this.tag, this.archived]) control.addEventListener(control === this.search ? 'input' : 'change', () => (control === this.archived ? this.loadList() : this.fill()));
      const create = can('flags:write') ? this.createForm() : null;
      put(this.root,
        h('h1', null, 'Feature flags'),
        h('div', { class: 'row' }, field('Search flags', this.search), field('Tag', this.tag),
          h('label', { class: 'check' }, this.archived, 'Show archived')),
        this.count,
        h('div', { class: 'table-wrap' }, h('table', { id: 'flags' },
          h('caption', { class: 'visually-hidden' }, 'Flags'),
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'On'), h('th', { scope: 'col' }, 'Flag'), h('th', { scope: 'col', class: 'hide-narrow' }, 'Tags'),
            h('th', { scope: 'col', class: 'num' }, 'Rollout'), h('th', { scope: 'col', class: 'hide-narrow' }, 'Variants'), h('th', { scope: 'col', class: 'num' }, 'Version'),
            h('th', { scope: 'col', class: 'hide-narrow' }, 'Updated'))),
          this.tbody)),
        can('flags:write') ? null : refusedNote('flag changes'),
        create);
      await this.loadList();
    }

    createForm() {
      const name = h('input', { id: 'new-flag-name', required: true, maxlength: 256 });
      const result = h('div', { 'aria-live': 'polite' });
      return h('form', {
        class: 'panel', onsubmit: async (event) => {
          event.preventDefault();
          try {
            const { data } = await api('POST', '/api/features', { name: name.value.trim() });
            go(`#/flags/${enc(data.key)}`);
          } catch (error) { put(result, problemBox(error)); }
        },
      }, h('h2', null, 'New flag'), h('div', { class: 'row' }, field('Name', name, 'The key is derived from it.'), h('button', { type: 'submit' }, 'Create flag')), result);
    }

    async loadList() {
      const { data } = await api('GET', `/api/features${this.archived.checked ? '?includeArchived=true' : ''}`);
      this.flags = new Map(data.items.map((f) => [f.key, f]));
      const tags = [...new Set(data.items.flatMap((f) => f.tags || []))].sort();
      const chosen = this.tag.value;
      put(this.tag, h('option', { value: '' }, 'All tags'), tags.map((t) => h('option', { value: t, selected: t === chosen }, t)));
      this.fill();
    }

    visible(flag) {
      const q = this.search.value.trim().toLowerCase();
      const tag = this.tag.value;
      if (tag && !(flag.tags || []).includes(tag)) return false;
      return !q || [flag.key, flag.name, flag.description].some((t) => (t || '').toLowerCase().includes(q));
    }

    row(flag) {
      const tr = h('tr', { 'data-key': flag.key, class: flag.archived ? 'archived' : null },
        h('td', null, flagSwitch(flag, (f, b) => this.toggle(f, b))),
        h('td', null, h('a', { href: `#/flags/${enc(flag.key)}`, 'data-focus': `link-${flag.key}` }, flag.key),
          flag.name && flag.name !== flag.key ? h('div', { class: 'muted' }, flag.name) : null,
          flag.archived ? h('span', { class: 'chip' }, 'archived') : null),
        h('td', { class: 'hide-narrow' }, (flag.tags || []).map((t) => h('span', { class: 'chip' }, t))),
        h('td', { class: 'num' }, `${flag.rollout ? flag.rollout.percentage : 100}%`),
        h('td', { class: 'hide-narrow' }, (flag.variants || []).map((v) => v.id).join(', ') || '—'),
        h('td', { class: 'num' }, flag.version),
        h('td', { class: 'hide-narrow' }, timeEl(flag.updatedAt), flag.updatedBy ? ` by ${flag.updatedBy}` : ''));
      return tr;
    }

    fill() {
      const shown = [...this.flags.values()].filter((f) => this.visible(f)).sort((a, b) => a.key.localeCompare(b.key));
      this.rows = new Map(shown.map((f) => [f.key, this.row(f)]));
      put(this.tbody, ...this.rows.values());
      if (!shown.length) this.tbody.appendChild(h('tr', null, h('td', { colspan: 7 }, this.flags.size ? 'No flag matches.' : 'No flags yet.')));
      this.count.textContent = `${shown.length} of ${this.flags.size} flags`;
    }

    update(flag) {
      if (!flag) return;
      const known = this.flags.get(flag.key);
      if (known && known.version > flag.version) return; // an older message, overtaken
      this.flags.set(flag.key, flag);
      const old = this.rows.get(flag.key);
      if (old && this.visible(flag)) {
        const fresh = this.row(flag);
        this.rows.set(flag.key, fresh);
        replaceKeepingFocus(old, fresh);
      } else this.fill();
    }

    async toggle(flag, button) {
      const latest = await toggleFlag((this.flags && this.flags.get(flag.key)) || this.flag || flag, button);
      if (!latest) return;
      if (this.key) { this.flag = latest; this.renderDetail(); } else this.update(latest);
    }

    // one flag

    async mountDetail() {
      const { data } = await api('GET', `/api/features/${enc(this.key)}?includeArchived=true`);
      this.flag = data;
      this.renderDetail();
    }

    renderDetail() {
      const flag = this.flag;
      const base = `#/flags/${enc(flag.key)}`;
      const tabs = [['definition', 'Definition'], ['history', 'History'], ['evaluate', 'Evaluate'], ['analytics', 'Analytics']];
      this.body = h('div', { class: 'tab-body' });
      const focusedFlag = document.activeElement && document.activeElement.getAttribute('data-flag');
      put(this.root,
        h('p', null, h('a', { href: '#/flags' }, '← All flags')),
        h('div', { class: 'row title-row' }, h('h1', null, flag.key), flagSwitch(flag, (f, b) => this.toggle(f, b))),
        flag.name !== flag.key ? h('p', { class: 'muted' }, flag.name) : null,
        h('nav', { class: 'tabs', 'aria-label': 'Flag views' }, tabs.map(([key, text]) =>
          h('a', { href: `${base}/${key}`, 'aria-current': key === this.tab ? 'page' : null }, text))),
        this.body);
      if (focusedFlag) { const again = this.root.querySelector(`[data-flag="${CSS.escape(focusedFlag)}"]`); if (again) again.focus(); }
      const renderers = { definition: this.renderDefinition, history: this.renderFlagHistory, evaluate: this.renderEvaluate, analytics: this.renderAnalytics };
      return (renderers[this.tab] || this.renderDefinition).call(this);
    }

    renderDefinition() {
      const f = this.flag;
      const r = f.rollout || {};
      const writable = can('flags:write') && !f.archived;
      const list = (items) => (items && items.length ? items.map((i) => h('span', { class: 'chip' }, String(i))) : h('span', { class: 'muted' }, 'none'));
      const percent = h('input', { id: 'rollout-percentage', type: 'number', min: 0, max: 100, step: 'any', value: String(r.percentage ?? 100), readOnly: !writable });
      const rolloutResult = h('div', { 'aria-live': 'polite' });
      const totalWeight = (f.variants || []).reduce((sum, v) => sum + (v.weight || 0), 0);
      const editor = h('textarea', { id: 'flag-json', rows: 18, spellcheck: 'false', readOnly: !writable });
      const editable = {};
      for (const [k, v] of Object.entries(f)) if (!['version', 'archived', 'createdAt', 'updatedAt', 'updatedBy', 'changed'].includes(k)) editable[k] = v;
      editor.value = pretty(editable);
      const editResult = h('div', { 'aria-live': 'polite' });
      put(this.body,
        writable ? null : refusedNote(f.archived ? 'changes to an archived flag here (PUT restores it)' : 'flag changes'),
        h('dl', { class: 'facts' },
          h('dt', null, 'Name'), h('dd', null, f.name),
          h('dt', null, 'Description'), h('dd', null, f.description || '—'),
          h('dt', null, 'Tags'), h('dd', null, list(f.tags)),
          h('dt', null, 'Version'), h('dd', { id: 'flag-version' }, `${f.version}${f.archived ? ' (archived)' : ''}`),
          h('dt', null, 'Updated'), h('dd', null, timeEl(f.updatedAt), f.updatedBy ? ` by ${f.updatedBy}` : '')),
        h('h2', null, 'Rollout'),
        h('form', {
          class: 'row', onsubmit: async (event) => {
            event.preventDefault();
            try {
              const { data } = await api('PATCH', `/api/features/${enc(f.key)}`, { rollout: { percentage: Number(percent.value) } }, { 'If-Match': `"${f.version}"` });
              this.flag = data;
              toast(`${f.key}: rollout ${data.rollout.percentage}% (version ${data.version}).`);
              this.renderDetail();
            } catch (error) { put(rolloutResult, problemBox(error)); }
          },
        }, field('Rollout percentage', percent), h('button', { type: 'submit', disabled: !writable }, 'Save rollout')),
        rolloutResult,
        h('h2', null, 'Variants'),
        (f.variants || []).length ? h('div', { class: 'table-wrap' }, h('table', { id: 'variants' },
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Variant'), h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col', class: 'num' }, 'Weight'), h('th', { scope: 'col' }, 'Payload'))),
          h('tbody', null, f.variants.map((v) => h('tr', null,
            h('th', { scope: 'row' }, h('code', null, v.id)), h('td', null, v.name || ''),
            h('td', { class: 'num' }, `${v.weight}${totalWeight ? ` (${Math.round((v.weight / totalWeight) * 1000) / 10}%)` : ''}`),
            h('td', null, v.configuration === null || v.configuration === undefined ? h('span', { class: 'muted' }, 'none') : h('pre', { class: 'payload' }, pretty(v.configuration))))))))
          : h('p', { class: 'muted' }, 'No variants: the flag is on or off.'),
        h('h2', null, 'Targeting'),
        h('dl', { class: 'facts' },
          h('dt', null, 'User groups'), h('dd', null, list(r.userGroups)),
          h('dt', null, 'Regions'), h('dd', null, list(r.regions)),
          h('dt', null, 'User ids'), h('dd', null, list(r.userIds)),
          h('dt', null, 'Agent ids'), h('dd', null, list(r.agentIds)),
          h('dt', null, 'Excluded user ids'), h('dd', null, list(r.excludeUserIds)),
          h('dt', null, 'Rules'), h('dd', null, (f.rules || []).length ? h('ul', null, f.rules.map((rule) =>
            h('li', null, h('code', null, rule.attribute), ` ${rule.operator} `, h('code', { class: 'value' }, compact(rule.values))))) : h('span', { class: 'muted' }, 'none'))),
        h('h2', null, 'Date window'),
        h('dl', { class: 'facts' },
          h('dt', null, 'Starts'), h('dd', null, r.startDate ? timeEl(r.startDate) : 'no start date'),
          h('dt', null, 'Ends'), h('dd', null, r.endDate ? timeEl(r.endDate) : 'no end date')),
        h('h2', null, 'Dependencies'),
        (f.dependencies || []).length ? h('ul', null, f.dependencies.map((d) => {
          const key = typeof d === 'string' ? d : d.flag;
          return h('li', null, h('a', { href: `#/flags/${enc(key)}` }, key), typeof d === 'object' && d.variant ? ` (variant ${d.variant})` : '');
        })) : h('p', { class: 'muted' }, 'None.'),
        h('h2', null, 'Environment overrides'),
        Object.keys(f.environments || {}).length ? Object.entries(f.environments).map(([env, o]) =>
          h('div', null, h('h3', null, env), h('pre', { class: 'json' }, pretty(o)))) : h('p', { class: 'muted' }, 'None.'),
        h('details', { class: 'panel' }, h('summary', null, 'Edit the definition as JSON'),
          h('form', {
            onsubmit: async (event) => {
              event.preventDefault();
              let body;
              try { body = JSON.parse(editor.value); } catch (error) {
                put(editResult, h('div', { class: 'error', role: 'alert' }, `Not valid JSON: ${error.message}`));
                return;
              }
              try {
                const { data } = await api('PUT', `/api/features/${enc(f.key)}`, body, { 'If-Match': `"${f.version}"` });
                this.flag = data;
                toast(data.changed ? `${f.key} saved as version ${data.version}.` : 'No change.');
                this.renderDetail();
              } catch (error) {
                put(editResult, problemBox(error, error.status === 412 ? 'Conflict: the flag changed since you loaded it' : null));
              }
            },
          }, field('Flag definition (JSON)', editor), h('button', { type: 'submit', class: 'primary', disabled: !writable }, 'Save definition'), editResult)));
    }

    async renderFlagHistory() {
      const { data } = await api('GET', `/api/features/${enc(this.key)}/history?limit=200`);
      const entries = data.items;
      const strip = (e) => { const out = { ...e }; for (const k of ['createdAt', 'updatedAt', 'updatedBy', 'version']) delete out[k]; return out; };
      const compare = versionCompare(entries, (e) => `version ${e.version}`, strip);
      put(this.body,
        h('div', { class: 'table-wrap' }, h('table', { id: 'flag-history' },
          h('caption', null, `History of ${this.key}`),
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'A'), h('th', { scope: 'col' }, 'B'), h('th', { scope: 'col', class: 'num' }, 'Version'),
            h('th', { scope: 'col' }, 'On'), h('th', { scope: 'col' }, 'Written'), h('th', { scope: 'col' }, 'By'))),
          h('tbody', null, entries.map((e) => h('tr', null, compare.radios(e), h('td', { class: 'num' }, e.version),
            h('td', null, e.archived ? 'archived' : (e.enabled ? 'on' : 'off')), h('td', null, timeEl(e.updatedAt)), h('td', null, e.updatedBy || '')))))),
        h('h2', null, 'Compare versions'), compare.out);
    }

    renderEvaluate() {
      const context = h('textarea', { id: 'eval-context', rows: 6, spellcheck: 'false' });
      context.value = this.lastContext || pretty({ userId: 'u-1', userGroup: 'beta', region: 'eu' });
      const env = h('select', { id: 'eval-env' }, h('option', { value: '' }, '(none)'),
        session.me.knownEnvironments.map((e) => h('option', { value: e, selected: e === this.lastEnv }, e)));
      const out = h('div', { id: 'eval-result', 'aria-live': 'polite' });
      put(this.body,
        h('p', { class: 'muted' }, 'Evaluates with the daemon\'s own engine (POST /api/features/evaluate); the evaluation is counted in analytics.'),
        h('form', {
          onsubmit: async (event) => {
            event.preventDefault();
            let ctx;
            try { ctx = JSON.parse(context.value || '{}'); } catch (error) {
              put(out, h('div', { class: 'error', role: 'alert' }, `Not valid JSON: ${error.message}`));
              return;
            }
            this.lastContext = context.value;
            this.lastEnv = env.value;
            if (env.value && ctx && typeof ctx === 'object') ctx.environment = env.value;
            try {
              const { data } = await api('POST', '/api/features/evaluate', { flags: [this.key], context: ctx });
              const res = data.results[this.key];
              put(out, h('dl', { class: 'facts' },
                h('dt', null, 'Enabled'), h('dd', { id: 'eval-enabled' }, res.enabled ? 'on' : 'off'),
                h('dt', null, 'Variant'), h('dd', { id: 'eval-variant' }, res.variant ?? '—'),
                h('dt', null, 'Reason'), h('dd', { id: 'eval-reason' }, res.reason, res.detail ? ` (${res.detail})` : ''),
                res.errorCode ? [h('dt', null, 'Error'), h('dd', null, res.errorCode)] : null,
                h('dt', null, 'Flag version'), h('dd', null, res.flagVersion ?? '—'),
                h('dt', null, 'Payload'), h('dd', null, res.configuration === null || res.configuration === undefined ? '—' : h('pre', { class: 'payload' }, pretty(res.configuration)))));
            } catch (error) { put(out, problemBox(error)); }
          },
        }, field('Context (JSON)', context, 'userId, agentId, sessionId, userGroup, region, customAttributes'), field('Environment', env),
        h('button', { type: 'submit', class: 'primary' }, 'Evaluate')), out);
    }

    renderAnalytics() {
      const today = new Date();
      const iso = (d) => d.toISOString().slice(0, 10);
      const from = h('input', { type: 'date', id: 'analytics-from', value: this.from || iso(new Date(today.getTime() - 29 * 86400000)) });
      const to = h('input', { type: 'date', id: 'analytics-to', value: this.to || iso(today) });
      const out = h('div', { id: 'analytics', 'aria-live': 'polite' });
      const show = async () => {
        this.from = from.value;
        this.to = to.value;
        const end = new Date(`${to.value}T00:00:00Z`);
        end.setUTCDate(end.getUTCDate() + 1);
        try {
          const { data } = await api('GET', `/api/features/${enc(this.key)}/analytics?startDate=${enc(from.value)}&endDate=${enc(iso(end))}`);
          put(out, this.chart(data, from.value, to.value));
        } catch (error) { put(out, problemBox(error)); }
      };
      put(this.body,
        h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); show(); } },
          field('From', from), field('To', to), h('button', { type: 'submit' }, 'Show')), out);
      return show();
    }

    chart(report, from, to) {
      const byDay = new Map(report.daily.map((d) => [d.date, d]));
      const days = [];
      const start = new Date(`${from}T00:00:00Z`);
      const end = new Date(`${to}T00:00:00Z`);
      const span = Math.round((end - start) / 86400000);
      if (span >= 0 && span <= 400) {
        for (let d = new Date(start); d <= end; d.setUTCDate(d.getUTCDate() + 1)) days.push(d.toISOString().slice(0, 10));
      } else days.push(...byDay.keys());
      const variants = Object.keys(report.variants).sort();
      const ON = 'on (no variant)';
      const OFF = 'off';
      const series = [...variants, ON, OFF];
      const colors = {};
      variants.forEach((v, i) => { colors[v] = PALETTE[i % PALETTE.length]; });
      colors[ON] = '#5fb36b';
      colors[OFF] = '#9aa4b0';
      const rows = days.map((date) => {
        const day = byDay.get(date) || { total: 0, enabled: 0, variants: {} };
        const values = { ...(day.variants || {}) };
        const inVariants = Object.values(values).reduce((a, b) => a + b, 0);
        values[ON] = Math.max(0, day.enabled - inVariants);
        values[OFF] = day.total - day.enabled;
        return { date, values, total: day.total };
      });
      const used = series.filter((name) => rows.some((r) => r.values[name]));
      const swatch = (name) => s('svg', { width: 12, height: 12, 'aria-hidden': 'true' }, s('rect', { width: 12, height: 12, fill: colors[name] }));
      return h('div', null,
        h('p', { id: 'analytics-total' }, `${report.total} evaluation${report.total === 1 ? '' : 's'}: ${report.enabled} on, ${report.disabled} off.`),
        report.total ? [
          stackedBars(rows, used, colors, `Evaluations of ${this.key} per day and variant, ${from} to ${to}`),
          h('ul', { class: 'legend', 'aria-label': 'Legend' }, used.map((name) => h('li', null, swatch(name), name))),
          h('details', null, h('summary', null, 'The numbers'), h('div', { class: 'table-wrap' }, h('table', { id: 'analytics-table' },
            h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Day'), used.map((n) => h('th', { scope: 'col', class: 'num' }, n)), h('th', { scope: 'col', class: 'num' }, 'Total'))),
            h('tbody', null, rows.filter((r) => r.total).map((r) => h('tr', null, h('th', { scope: 'row' }, r.date),
              used.map((n) => h('td', { class: 'num' }, r.values[n] || 0)), h('td', { class: 'num' }, r.total))))))),
          h('h3', null, 'Reasons'), h('ul', null, Object.entries(report.reasons).map(([k, v]) => h('li', null, `${k}: ${v}`)))]
          : h('p', { class: 'muted' }, 'No evaluations in this range.'));
    }

    async refreshDetail() {
      try {
        const { data } = await api('GET', `/api/features/${enc(this.key)}?includeArchived=true`);
        if (data.version === this.flag.version) return;
        this.flag = data;
        if (this.tab === 'definition' || this.tab === 'history') await this.renderDetail();
        else {
          const sw = this.root.querySelector(`[data-flag="${CSS.escape(this.key)}"]`);
          if (sw) replaceKeepingFocus(sw, flagSwitch(data, (f, b) => this.toggle(f, b)));
        }
      } catch (error) { /* shown on the next action */ }
    }

    onLive(message) {
      if (message.type === 'FEATURE_FLAG_UPDATE') {
        if (this.key) { if (message.flagKey === this.key) this.refreshDetail(); } else if (message.flag) this.update(message.flag);
        else this.loadList();
      } else if (message.type === 'SUBSCRIBED' && message.serviceName === FLAG_STREAM) {
        if (this.key) this.refreshDetail(); else this.loadList();
      }
    }
  };

  // -- secrets -----------------------------------------------------------------------------

  VIEWS.secrets = class SecretsView {
    constructor(root, args) {
      this.root = root;
      [this.service, this.env] = args;
      this.title = 'Secrets';
      this.revealed = new Map();
    }

    async mount() {
      const [configs, registered] = await Promise.all([api('GET', '/api/config'),
        api('GET', '/api/services').catch(() => ({ data: { items: [] } }))]);
      const services = [...new Set([...configs.data.items.map((i) => i.serviceName),
        ...registered.data.items.map((i) => i.serviceName).filter((n) => can('secrets:list', n)),
        ...(this.service ? [this.service] : [])])];
      this.env = this.env || session.me.defaultEnvironment;
      const svc = h('select', { id: 'secret-service' }, h('option', { value: '' }, 'Choose…'), services.sort().map((n) => h('option', { value: n, selected: n === this.service }, n)));
      const env = h('select', { id: 'secret-env' }, session.me.knownEnvironments.map((e) => h('option', { value: e, selected: e === this.env }, e)));
      const choose = () => { if (svc.value) go(`#/secrets/${enc(svc.value)}/${enc(env.value)}`); };
      svc.addEventListener('change', choose);
      env.addEventListener('change', choose);
      this.table = h('div', { id: 'secrets' });
      put(this.root,
        h('h1', null, this.service ? `Secrets of ${this.service} / ${this.env}` : 'Secrets'),
        h('p', { class: 'muted' }, 'Names and metadata only. A value is shown only when you ask for it and your token may read it; every such read is recorded in the audit log.'),
        h('div', { class: 'row' }, field('Service', svc), field('Environment', env)),
        this.table);
      if (this.service) {
        this.title = `Secrets of ${this.service}`;
        await this.load();
      }
    }

    async load() {
      const base = `/api/secrets/${enc(this.service)}`;
      const q = `environment=${enc(this.env)}`;
      const { data } = await api('GET', `${base}?${q}`);
      // Access counts come from the versions listing (metadata only: nothing is decrypted).
      const details = await Promise.all(data.items.map((item) => api('GET', `${base}/${enc(item.name)}/versions?${q}`)
        .then((r) => r.data.items.find((v) => v.version === item.version) || item).catch(() => item)));
      this.items = details;
      this.render();
    }

    render() {
      const readable = can('secrets:read', this.service, this.env);
      if (!this.items.length) { put(this.table, h('p', null, 'No secrets here.')); return; }
      put(this.table,
        readable ? null : h('p', { class: 'notice' }, 'Your token may list these secrets but not read their values (it needs the secrets:read scope).'),
        h('div', { class: 'table-wrap' }, h('table', null,
          h('caption', { class: 'visually-hidden' }, 'Secrets'),
          h('thead', null, h('tr', null, ['Name', 'Version', 'Written', 'Expires', 'Reads', 'Last read', 'Value'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, this.items.map((item) => h('tr', { 'data-secret': item.name },
            h('th', { scope: 'row' }, h('code', null, item.name), item.description ? h('div', { class: 'muted' }, item.description) : null),
            h('td', { class: 'num' }, item.version),
            h('td', null, timeEl(item.createdAt), ` by ${item.createdBy}`),
            h('td', null, item.destroyed ? `${item.destroyed}` : timeEl(item.expiresAt)),
            h('td', { class: 'num access-count' }, item.accessCount ?? 0),
            h('td', null, timeEl(item.lastAccessedAt)),
            h('td', null, this.valueCell(item, readable))))))));
    }

    valueCell(item, readable) {
      if (item.destroyed) return h('span', { class: 'muted' }, 'destroyed');
      if (!readable) return h('span', { class: 'muted' }, 'hidden');
      if (this.revealed.has(item.name)) {
        return h('span', null, h('code', { class: 'value secret-value' }, this.revealed.get(item.name)), ' ',
          h('button', { type: 'button', 'data-focus': `hide-${item.name}`, onclick: () => { this.revealed.delete(item.name); this.render(); } }, `Hide ${item.name}`));
      }
      return h('button', { type: 'button', 'data-focus': `reveal-${item.name}`, onclick: () => this.reveal(item) }, `Reveal ${item.name}`);
    }

    async reveal(item) {
      try {
        const { data } = await api('GET', `/api/secrets/${enc(this.service)}/${enc(item.name)}?environment=${enc(this.env)}`);
        this.revealed.set(item.name, data.value ?? '');
        Object.assign(item, { accessCount: data.accessCount, lastAccessedAt: data.lastAccessedAt });
        this.render();
        const hide = this.table.querySelector(`[data-focus="hide-${CSS.escape(item.name)}"]`);
        if (hide) hide.focus();
        toast(`Read ${item.name}; the read is in the audit log.`);
      } catch (error) { toast(`Not read: ${error.message}`, true); }
    }

    unmount() { this.revealed.clear(); }
  };

  // -- services (registry) ----------------------------------------------------------------

  function polling(view, ms, fn) {
    const tick = async () => {
      if (view.stopped) return;
      if (!document.hidden) { try { await fn(); } catch (error) { /* next tick */ } }
      if (!view.stopped) view.timer = setTimeout(tick, ms);
    };
    view.timer = setTimeout(tick, ms);
  }

  VIEWS.services = class ServicesView {
    constructor(root) { this.root = root; this.title = 'Services'; }

    async mount() {
      this.status = h('select', { id: 'service-status' }, ['', 'healthy', 'degraded', 'unhealthy', 'unknown', 'stale'].map((s2) => h('option', { value: s2 }, s2 || 'Any status')));
      this.status.addEventListener('change', () => this.load(true));
      this.table = h('div', { id: 'services' });
      put(this.root, h('h1', null, 'Services'),
        h('p', { class: 'muted' }, 'Registered services, their health checks and the required configuration they are missing; refreshed every second.'),
        h('div', { class: 'row' }, field('Status', this.status)), this.table);
      await this.load(true);
      // The registry's health is not on the WebSocket protocol: read it each second (in memory on the daemon).
      polling(this, 1000, () => this.load(false));
    }

    async load(force) {
      const q = this.status.value ? `?status=${enc(this.status.value)}` : '';
      const { data } = await api('GET', `/api/services${q}`);
      const signature = compact(data.items);
      if (!force && signature === this.signature) return;
      this.signature = signature;
      if (!data.items.length) { put(this.table, h('p', null, 'No registered services.')); return; }
      put(this.table, h('div', { class: 'table-wrap' }, h('table', null,
        h('caption', { class: 'visually-hidden' }, 'Registered services'),
        h('thead', null, h('tr', null, ['Service', 'Environment', 'Status', 'Last check', 'Last heartbeat', 'Missing configs', 'Version', 'Last error'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, data.items.map((svc) => h('tr', { 'data-service': svc.serviceName },
          h('th', { scope: 'row' }, svc.displayName || svc.serviceName, svc.displayName ? h('div', { class: 'muted' }, svc.serviceName) : null,
            (svc.endpoints || []).length ? h('div', { class: 'muted' }, svc.endpoints.join(' ')) : null),
          h('td', null, svc.environment),
          h('td', null, h('span', { class: `status status-${svc.status}` }, svc.status), svc.latencyMs != null ? h('div', { class: 'muted' }, `${Math.round(svc.latencyMs)} ms`) : null),
          h('td', null, timeEl(svc.lastCheck)),
          h('td', null, timeEl(svc.lastHeartbeat)),
          h('td', { class: 'missing' }, (svc.missingConfigs || []).length ? svc.missingConfigs.map((c) => h('span', { class: 'chip' }, c)) : h('span', { class: 'muted' }, 'none'),
            (svc.missingOptionalConfigs || []).length ? h('div', { class: 'muted' }, `optional: ${svc.missingOptionalConfigs.join(', ')}`) : null),
          h('td', null, svc.version || '—'),
          h('td', null, svc.lastError || '—')))))));
    }

    unmount() { this.stopped = true; clearTimeout(this.timer); }
  };

  // -- audit log ---------------------------------------------------------------------------

  VIEWS.audit = class AuditView {
    constructor(root) { this.root = root; this.title = 'Audit log'; this.offset = 0; this.limit = 50; }

    async mount() {
      this.verify = h('div', { id: 'audit-verify', 'aria-live': 'polite' });
      this.target = h('input', { id: 'audit-target', type: 'search', placeholder: 'config:checkout/production' });
      this.actor = h('input', { id: 'audit-actor', type: 'search' });
      this.action = h('input', { id: 'audit-action', type: 'search', placeholder: 'config.update' });
      this.table = h('div', { id: 'audit' });
      this.pager = h('div', { class: 'row' });
      this.target.addEventListener('change', () => { this.offset = 0; this.load(true); });
      for (const input of [this.actor, this.action]) input.addEventListener('input', () => this.render());
      put(this.root, h('h1', null, 'Audit log'), this.verify,
        h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); this.offset = 0; this.load(true); } },
          field('Target', this.target), field('Actor', this.actor), field('Action', this.action), h('button', { type: 'submit' }, 'Filter')),
        this.table, this.pager);
      await Promise.all([this.load(true), this.check()]);
      polling(this, 2000, () => this.load(false));
    }

    async check() {
      try {
        const { data } = await api('GET', '/api/audit/verify');
        put(this.verify, h('p', { class: 'ok', id: 'chain-ok' }, `Chain verified: ${data.entries} entries, unbroken.`));
      } catch (error) {
        if (error.status === 409 && error.problem && error.problem.breaks) {
          put(this.verify, h('div', { class: 'error', role: 'alert' }, `The chain is broken (${error.problem.entries} entries):`,
            h('ul', null, error.problem.breaks.map((b) => h('li', null, `entry ${b.id}: ${b.reason}`)))));
        } else put(this.verify, problemBox(error));
      }
    }

    async load(force) {
      const target = this.target.value.trim();
      const q = `limit=${this.limit}&offset=${this.offset}${target ? `&target=${enc(target)}` : ''}`;
      const { data } = await api('GET', `/api/audit?${q}`);
      const signature = compact([data.total, data.items.length && data.items[0].id]);
      if (!force && signature === this.signature) return;
      this.signature = signature;
      this.page = data;
      this.render();
      if (!force) this.check();
    }

    render() {
      const data = this.page;
      const actor = this.actor.value.trim().toLowerCase();
      const action = this.action.value.trim().toLowerCase();
      const items = data.items.filter((e) => (!actor || e.actor.toLowerCase().includes(actor)) && (!action || e.action.toLowerCase().includes(action)));
      put(this.table, h('div', { class: 'table-wrap' }, h('table', { id: 'audit-entries' },
        h('caption', null, `Entries ${data.total ? this.offset + 1 : 0}–${this.offset + data.items.length} of ${data.total}, newest first`),
        h('thead', null, h('tr', null, ['#', 'Time', 'Actor', 'Action', 'Target', 'Details', 'Request'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, items.map((e) => h('tr', null,
          h('td', { class: 'num' }, e.id), h('td', null, timeEl(e.at)), h('td', null, e.actor), h('td', null, h('code', null, e.action)),
          h('td', null, h('code', null, e.target)), h('td', null, h('code', { class: 'value' }, compact(e.details || {}))),
          h('td', { class: 'hide-narrow' }, h('code', null, e.requestId || ''))))))));
      put(this.pager,
        h('button', { type: 'button', disabled: this.offset === 0, onclick: () => { this.offset = Math.max(0, this.offset - this.limit); this.load(true); } }, 'Newer'),
        h('button', { type: 'button', disabled: this.offset + this.limit >= data.total, onclick: () => { this.offset += this.limit; this.load(true); } }, 'Older'));
    }

    onLive() { if (this.offset === 0) this.load(false); }

    unmount() { this.stopped = true; clearTimeout(this.timer); }
  };

  // -- start --------------------------------------------------------------------------------

  /** The first page is usable: a mark for benchmarks (performance.getEntriesByName). */
  function ready() {
    if (!performance.getEntriesByName('fpcd:ready').length) performance.mark('fpcd:ready');
  }

  async function start() {
    let me;
    try {
      me = await loadSession();
    } catch (error) {
      put(document.body, h('main', { id: 'main' }, problemBox(error, 'The daemon cannot be reached')));
      return;
    }
    window.addEventListener('hashchange', () => route(true));
    if (!me) { showSignIn(); return; }
    put(document.body);
    route(false);
  }

  start();
})();
