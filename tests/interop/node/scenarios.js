// The amqplib interop scenarios, written once against amqplib's promise-shaped channel API.
// promise_api.js runs them on amqplib's promise API; callback_api.js on its callback API
// (through an adapter that turns each callback into a promise). Each scenario asserts what
// the client receives; run() maps `--list` and a scenario name to exit codes.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');

const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
const PREFIX = process.env.WARREN_INTEROP_PREFIX || `interop-${process.pid}`;
const SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function makeName(client) {
  return (...parts) => [PREFIX, client, ...parts].join('.');
}

/** The reply code and text of a channel or connection close, from amqplib's error. */
function closeOf(err) {
  const m = /with message "(.*)"$/s.exec(err && err.message ? err.message : '');
  return [err && err.code, m ? m[1] : String(err)];
}

async function expectClose(promise, code, text, what) {
  try {
    await promise;
  } catch (e) {
    assert.deepEqual(closeOf(e), [code, text], what);
    return;
  }
  assert.fail(`${what}: the broker did not close the channel`);
}

const notFoundQueue = (q) => `NOT_FOUND - no queue '${q}' in vhost '/'`;
const notFoundExchange = (x) => `NOT_FOUND - no exchange '${x}' in vhost '/'`;

/** A queue of deliveries from a consumer, awaited one at a time. */
class Deliveries {
  constructor() {
    this.items = [];
    this.waiters = [];
    this.push = (m) => {
      const w = this.waiters.shift();
      if (w) w(m);
      else this.items.push(m);
    };
  }

  next(what, ms = 5000) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${what}: no delivery within ${ms}ms`)), ms);
      this.waiters.push((m) => {
        clearTimeout(t);
        resolve(m);
      });
    });
  }

  async none(ms, what) {
    await sleep(ms);
    assert.equal(this.items.length, 0, `${what}: unexpected delivery`);
  }
}

async function sentinelDrain(ch, q) {
  ch.sendToQueue(q, Buffer.from('sentinel'));
  const got = [];
  const deadline = Date.now() + 5000;
  for (;;) {
    const m = await ch.get(q, {noAck: true});
    if (!m) {
      assert.ok(Date.now() < deadline, `sentinel never reached ${q}`);
      await sleep(10);
      continue;
    }
    const body = m.content.toString();
    if (body === 'sentinel') return got;
    got.push(body);
  }
}

async function getOne(ch, q) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const m = await ch.get(q, {noAck: false});
    if (m) return m;
    assert.ok(Date.now() < deadline, `no message in ${q}`);
    await sleep(10);
  }
}

/** Opens a channel; its close by the broker is asserted where expected, never thrown. */
async function open(conn, confirm = false) {
  const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
  ch.on('error', () => {});
  return ch;
}

const digest = (b) => `${b.length} bytes sha256 ${crypto.createHash('sha256').update(b).digest('hex').slice(0, 16)}`;

function scenarios(api) {
  const name = makeName(api.client);
  const connect = async (opts) => {
    const conn = await api.connect(URL, opts);
    conn.on('error', () => {});
    return conn;
  };

  return {
    'connect-heartbeat': async () => {
      const conn = await api.connect(`${URL}?heartbeat=1`, {clientProperties: {connection_name: name('hb')}});
      assert.equal(api.heartbeat(conn), 1, 'negotiated heartbeat');
      let closed = null;
      conn.on('close', (e) => {
        closed = e || 'closed';
      });
      conn.on('error', () => {});
      // amqplib fails a connection that hears nothing for 2 heartbeat intervals, as does
      // the broker: idle well past both.
      await sleep(3500);
      assert.equal(closed, null, 'connection open after idling');
      const ch = await open(conn);
      const q = await ch.assertQueue('', {exclusive: true});
      assert.match(q.queue, /^amq\.gen-/, 'server-named queue');
      await conn.close();
    },

    exchanges: async () => {
      const conn = await connect();
      let ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      const kinds = [
        ['direct', 'k1', 'k1', {}, undefined],
        ['fanout', 'ignored', 'other', {}, undefined],
        ['topic', 'k.*', 'k.1', {}, undefined],
        ['headers', '', '', {'x-match': 'all', h: 'v'}, {h: 'v'}],
      ];
      for (const [kind, key, rk, args, headers] of kinds) {
        const x = name('x', kind);
        await ch.assertExchange(x, kind, {durable: false});
        await ch.checkExchange(x);
        await ch.bindQueue(q, x, key, args);
        ch.publish(x, rk, Buffer.from(`bound-${kind}`), {headers});
        assert.deepEqual(await sentinelDrain(ch, q), [`bound-${kind}`], `${kind}: routed while bound`);
        await ch.unbindQueue(q, x, key, args);
        ch.publish(x, rk, Buffer.from('unbound'), {headers});
        assert.deepEqual(await sentinelDrain(ch, q), [], `${kind}: routed after unbind`);
        await ch.deleteExchange(x, {});
        await expectClose(ch.checkExchange(x), 404, notFoundExchange(x), 'check after delete');
        ch = await open(conn);
      }
      const src = name('x', 'src');
      const dst = name('x', 'dst');
      await ch.assertExchange(src, 'direct', {durable: false});
      await ch.assertExchange(dst, 'fanout', {durable: false});
      await ch.bindQueue(q, dst, '', {});
      await ch.bindExchange(dst, src, 'e2e', {});
      ch.publish(src, 'e2e', Buffer.from('via-e2e'));
      ch.publish(src, 'other', Buffer.from('not-routed'));
      assert.deepEqual(await sentinelDrain(ch, q), ['via-e2e'], 'exchange-to-exchange routing');
      await ch.unbindExchange(dst, src, 'e2e', {});
      ch.publish(src, 'e2e', Buffer.from('after-unbind'));
      assert.deepEqual(await sentinelDrain(ch, q), [], 'after exchange.unbind');
      await ch.deleteExchange(src, {});
      await ch.deleteExchange(dst, {});
      await ch.checkExchange('amq.match');
      await conn.close();
    },

    'topic-routing': async () => {
      const conn = await connect();
      const ch = await open(conn);
      const x = name('topic');
      await ch.assertExchange(x, 'topic', {durable: false, autoDelete: true});
      const bindings = {
        'a.*': ['a.b'],
        'a.#': ['a.b', 'a.b.c', 'a', 'a.b.c.d'],
        '#.c': ['a.b.c', 'x.c', 'c'],
        '*.b.*': ['a.b.c'],
      };
      for (const b of Object.keys(bindings)) {
        await ch.assertQueue(name('t', b), {exclusive: true});
        await ch.bindQueue(name('t', b), x, b, {});
      }
      for (const k of ['a.b', 'a.b.c', 'a', 'x.c', 'a.b.c.d', 'c', 'b']) ch.publish(x, k, Buffer.from(k));
      for (const [b, want] of Object.entries(bindings)) {
        assert.deepEqual(await sentinelDrain(ch, name('t', b)), want, `messages matching ${b}`);
      }
      await conn.close();
    },

    'headers-routing': async () => {
      const conn = await connect();
      const ch = await open(conn);
      const x = name('headers');
      await ch.assertExchange(x, 'headers', {durable: false, autoDelete: true});
      const qAll = name('all');
      const qAny = name('any');
      await ch.assertQueue(qAll, {exclusive: true});
      await ch.assertQueue(qAny, {exclusive: true});
      await ch.bindQueue(qAll, x, '', {'x-match': 'all', format: 'pdf', type: 'report'});
      await ch.bindQueue(qAny, x, '', {'x-match': 'any', format: 'pdf', type: 'report'});
      const cases = [
        [{format: 'pdf', type: 'report'}, true, true],
        [{format: 'pdf'}, false, true],
        [{format: 'zip', type: 'log'}, false, false],
        [{}, false, false],
        [{format: 'pdf', type: 'report', extra: 1}, true, true],
      ];
      const wantAll = [];
      const wantAny = [];
      cases.forEach(([headers, all, any], i) => {
        ch.publish(x, '', Buffer.from(`m${i}`), {headers});
        if (all) wantAll.push(`m${i}`);
        if (any) wantAny.push(`m${i}`);
      });
      assert.deepEqual(await sentinelDrain(ch, qAll), wantAll, 'x-match=all');
      assert.deepEqual(await sentinelDrain(ch, qAny), wantAny, 'x-match=any');
      await conn.close();
    },

    'ack-nack-reject': async () => {
      const conn = await connect();
      const ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      for (const m of ['m1', 'm2', 'm3', 'm4']) ch.sendToQueue(q, Buffer.from(m));
      await ch.prefetch(1, false);
      const d = new Deliveries();
      const {consumerTag} = await ch.consume(q, d.push, {noAck: false});
      const body = (m) => [m.content.toString(), m.fields.redelivered];
      let m = await d.next('m1');
      assert.deepEqual(body(m), ['m1', false], 'first delivery');
      ch.ack(m);
      m = await d.next('m2');
      assert.deepEqual(body(m), ['m2', false], 'second delivery');
      ch.nack(m, false, true);
      m = await d.next('m2 again');
      assert.deepEqual(body(m), ['m2', true], 'nacked message redelivered');
      ch.ack(m);
      m = await d.next('m3');
      assert.deepEqual(body(m), ['m3', false], 'after the requeued one');
      ch.reject(m, false);
      m = await d.next('m4');
      assert.deepEqual(body(m), ['m4', false], 'rejected message dropped');
      ch.reject(m, true);
      m = await d.next('m4 again');
      assert.deepEqual(body(m), ['m4', true], 'reject with requeue redelivers');
      ch.ack(m);
      await ch.cancel(consumerTag);
      ch.sendToQueue(q, Buffer.from('m5'));
      ch.sendToQueue(q, Buffer.from('m6'));
      await getOne(ch, q);
      const m6 = await getOne(ch, q);
      assert.equal(m6.content.toString(), 'm6', 'last message');
      ch.nack(m6, true, false);
      assert.equal((await ch.checkQueue(q)).messageCount, 0, 'queue empty at the end');
      await conn.close();
    },

    'basic-get': async () => {
      const conn = await connect();
      const ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      assert.equal(await ch.get(q, {noAck: false}), false, 'basic.get on an empty queue answers get-empty');
      for (const m of ['g1', 'g2', 'g3']) ch.sendToQueue(q, Buffer.from(m));
      const deadline = Date.now() + 5000;
      while ((await ch.checkQueue(q)).messageCount !== 3) {
        assert.ok(Date.now() < deadline, '3 messages queued');
        await sleep(10);
      }
      let m = await getOne(ch, q);
      const f = m.fields;
      assert.deepEqual(
        [m.content.toString(), f.messageCount, f.redelivered, f.routingKey, f.exchange],
        ['g1', 2, false, q, ''],
        'first get',
      );
      ch.ack(m);
      m = await ch.get(q, {noAck: true});
      assert.deepEqual([m.content.toString(), m.fields.messageCount], ['g2', 1], 'no-ack get');
      m = await getOne(ch, q);
      assert.equal(m.content.toString(), 'g3', 'third get');
      ch.reject(m, true);
      m = await getOne(ch, q);
      assert.deepEqual([m.content.toString(), m.fields.redelivered, m.fields.messageCount], ['g3', true, 0], 'get after requeue');
      ch.ack(m);
      assert.equal(await ch.get(q, {noAck: false}), false, 'queue empty at the end');
      await conn.close();
    },

    prefetch: async () => {
      const conn = await connect();
      const ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      for (let i = 0; i < 5; i++) ch.sendToQueue(q, Buffer.from(`p${i}`));
      await ch.prefetch(2, false);
      const d = new Deliveries();
      await ch.consume(q, d.push, {noAck: false});
      const d0 = await d.next('p0');
      const d1 = await d.next('p1');
      assert.deepEqual([d0.content.toString(), d1.content.toString()], ['p0', 'p1'], 'first two');
      await d.none(700, 'prefetch 2 with nothing acked');
      ch.ack(d0);
      const d2 = await d.next('p2');
      assert.equal(d2.content.toString(), 'p2', 'one more after one ack');
      await d.none(500, 'still at the prefetch limit');
      ch.ack(d2, true);
      const d3 = await d.next('p3');
      const d4 = await d.next('p4');
      assert.deepEqual([d3.content.toString(), d4.content.toString()], ['p3', 'p4'], 'the rest');
      ch.ack(d4, true);
      await conn.close();
    },

    'publisher-confirms': async () => {
      const conn = await connect();
      const ch = await open(conn, true);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      const publish = (x, key, body, opts) =>
        new Promise((resolve) => ch.publish(x, key, Buffer.from(body), opts || {}, (err) => resolve(err ? 'nack' : 'ack')));
      const acks = await Promise.all(Array.from({length: 50}, (_, i) => publish('', q, `c${i}`)));
      assert.deepEqual(acks, Array(50).fill('ack'), 'every publish acked');
      await ch.waitForConfirms();
      assert.equal((await ch.checkQueue(q)).messageCount, 50, 'confirmed messages queued');
      const returned = new Promise((resolve) => ch.once('return', resolve));
      assert.equal(await publish('amq.direct', name('nowhere'), 'r', {mandatory: true}), 'ack', 'returned message acked');
      assert.equal((await returned).fields.replyCode, 312, 'basic.return reply code');
      const full = name('full');
      await ch.assertQueue(full, {exclusive: true, arguments: {'x-max-length': 1, 'x-overflow': 'reject-publish'}});
      assert.equal(await publish('', full, 'fits'), 'ack', 'first publish to the full queue');
      assert.equal(await publish('', full, 'overflows'), 'nack', 'publish past x-max-length');
      assert.equal((await ch.checkQueue(full)).messageCount, 1, 'the full queue kept one');
      await conn.close();
    },

    'mandatory-return': async () => {
      const conn = await connect();
      const ch = await open(conn);
      const returns = new Deliveries();
      ch.on('return', returns.push);
      const key = name('unroutable');
      ch.publish('amq.direct', key, Buffer.from('come back'), {mandatory: true, messageId: 'ret-1', headers: {h: 'v'}});
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      ch.publish('', q, Buffer.from('routed'), {mandatory: true});
      const r = await returns.next('basic.return');
      assert.deepEqual(
        [r.fields.replyCode, r.fields.replyText, r.fields.exchange, r.fields.routingKey],
        [312, 'NO_ROUTE', 'amq.direct', key],
        'basic.return',
      );
      assert.deepEqual(
        [r.content.toString(), r.properties.messageId, r.properties.headers],
        ['come back', 'ret-1', {h: 'v'}],
        'returned content',
      );
      ch.publish('amq.direct', key, Buffer.from('dropped'));
      assert.deepEqual(await sentinelDrain(ch, q), ['routed'], 'routed mandatory message');
      await returns.none(300, 'only the unroutable message returned');
      await conn.close();
    },

    bodies: async () => {
      const conn = await connect();
      const ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      const frameBody = 131072 - 8;
      const large = Buffer.alloc(10 * 1024 * 1024);
      for (let i = 0; i < large.length; i++) large[i] = i & 0xff;
      const want = [Buffer.alloc(0), Buffer.from('x'), Buffer.alloc(frameBody, 'y'), Buffer.alloc(frameBody + 1, 'z'), large];
      for (const b of want) ch.sendToQueue(q, b);
      const d = new Deliveries();
      await ch.consume(q, d.push, {noAck: true});
      for (let i = 0; i < want.length; i++) {
        assert.equal(digest((await d.next(`body ${i}`, 10000)).content), digest(want[i]), `body ${i}`);
      }
      await conn.close();
    },

    properties: async () => {
      const conn = await connect();
      const ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: true});
      // amqplib infers a field type from the JS value, or takes it from {'!': type, value}.
      const headers = {
        string: 'hello ✓',
        bytes: Buffer.from([0, 1, 0xfe, 0xff]),
        int: -123456,
        int64: 2 ** 40 + 7,
        'bool-true': true,
        'bool-false': false,
        double: 3.25,
        int8: {'!': 'int8', value: -8},
        int16: {'!': 'int16', value: -1600},
        float: {'!': 'float', value: 1.5},
        decimal: {'!': 'decimal', value: {places: 3, digits: 12345}},
        timestamp: {'!': 'timestamp', value: 1714979289},
        table: {nested: 'yes', n: 1, deeper: {x: 'y'}},
        array: ['a', 1, true, {k: 'v'}, ['inner']],
        void: null,
      };
      // What amqplib decodes each of them to.
      const expected = {
        ...headers,
        int8: -8,
        int16: -1600,
        float: 1.5,
        decimal: {'!': 'decimal', value: {places: 3, digits: 12345}},
        timestamp: {'!': 'timestamp', value: 1714979289},
      };
      const sent = {
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        headers,
        deliveryMode: 2,
        priority: 5,
        correlationId: 'corr-1',
        replyTo: 'reply-queue',
        expiration: '60000',
        messageId: 'msg-1',
        timestamp: 1700000000,
        type: 'kind',
        userId: 'guest',
        appId: 'interop',
      };
      ch.sendToQueue(q, Buffer.from('{}'), sent);
      const m = await getOne(ch, q);
      assert.equal(m.content.toString(), '{}', 'body');
      for (const k of Object.keys(sent)) {
        if (k !== 'headers') assert.deepEqual(m.properties[k], sent[k], `property ${k}`);
      }
      assert.deepEqual(Object.keys(m.properties.headers).sort(), Object.keys(expected).sort(), 'header names');
      for (const [k, v] of Object.entries(expected)) assert.deepEqual(m.properties.headers[k], v, `header ${k}`);
      ch.sendToQueue(q, Buffer.from('bare'));
      const bare = await getOne(ch, q);
      assert.deepEqual([bare.properties.contentType, bare.properties.deliveryMode], [undefined, undefined], 'empty properties');
      await conn.close();
    },

    'channel-errors': async () => {
      const conn = await connect();
      let ch = await open(conn);
      const missing = name('missing');
      await expectClose(ch.checkQueue(missing), 404, notFoundQueue(missing), 'check of a missing queue');
      ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {durable: false, autoDelete: true});
      await expectClose(
        ch.assertQueue(q, {durable: true, autoDelete: true}),
        406,
        `PRECONDITION_FAILED - inequivalent arg 'durable' for queue '${q}' in vhost '/': received 'true' but current is 'false'`,
        'redeclare with another durable flag',
      );
      ch = await open(conn);
      const nox = name('no-exchange');
      const closed = new Promise((resolve) => ch.once('error', resolve));
      ch.publish(nox, 'k', Buffer.from('lost'));
      assert.deepEqual(closeOf(await closed), [404, notFoundExchange(nox)], 'publish to a missing exchange');
      ch = await open(conn);
      ch.sendToQueue(q, Buffer.from('still works'));
      assert.equal((await getOne(ch, q)).content.toString(), 'still works', 'a new channel works after the errors');
      await ch.deleteQueue(q, {});
      await conn.close();
    },

    'dead-lettering': async () => {
      const conn = await connect();
      const ch = await open(conn);
      const dlx = name('dlx');
      await ch.assertExchange(dlx, 'fanout', {autoDelete: true, durable: false});
      const dead = name('dead');
      await ch.assertQueue(dead, {exclusive: true});
      await ch.bindQueue(dead, dlx, '');
      const src = name('src');
      await ch.assertQueue(src, {exclusive: true, deadLetterExchange: dlx, messageTtl: 60000});
      ch.sendToQueue(src, Buffer.from('expires'), {expiration: '20', headers: {k: 1}});
      let m = await getOne(ch, dead);
      assert.equal(m.content.toString(), 'expires', 'expired message dead-lettered');
      const h = m.properties.headers;
      assert.equal(h.k, 1, 'original headers kept');
      assert.equal(h['x-death'].length, 1, 'one x-death entry');
      const d = h['x-death'][0];
      assert.deepEqual(
        [d.count, d.reason, d.queue, d.exchange, d['routing-keys'], d['original-expiration']],
        [1, 'expired', src, '', [src], '20'],
        'x-death entry for the expiry',
      );
      assert.equal(m.properties.expiration, undefined, 'expiration removed');
      assert.deepEqual(
        [h['x-first-death-reason'], h['x-first-death-queue'], h['x-first-death-exchange']],
        ['expired', src, ''],
        'x-first-death headers',
      );
      ch.ack(m);
      ch.sendToQueue(src, Buffer.from('rejected'));
      m = await getOne(ch, src);
      ch.reject(m, false);
      m = await getOne(ch, dead);
      assert.equal(m.content.toString(), 'rejected', 'rejected message dead-lettered');
      const r = m.properties.headers['x-death'][0];
      assert.deepEqual([r.count, r.reason, r.queue], [1, 'rejected', src], 'x-death entry for the reject');
      ch.ack(m);
      await conn.close();
    },

    'direct-reply-to': async () => {
      const conn = await connect();
      const rq = name('rpc');
      let ch = await open(conn);
      await ch.assertQueue(rq, {exclusive: false, autoDelete: false, durable: false});
      ch.sendToQueue(rq, Buffer.from('x'), {replyTo: 'amq.rabbitmq.reply-to'});
      await expectClose(
        ch.checkQueue(rq),
        406,
        'PRECONDITION_FAILED - fast reply consumer does not exist',
        'reply-to without the pseudo-queue consumer',
      );
      ch = await open(conn);
      const replies = new Deliveries();
      await ch.consume('amq.rabbitmq.reply-to', replies.push, {noAck: true});
      const server = await connect();
      const sch = await open(server);
      for (let i = 0; i < 3; i++) {
        ch.sendToQueue(rq, Buffer.from(`req-${i}`), {replyTo: 'amq.rabbitmq.reply-to', correlationId: `c${i}`});
      }
      for (let i = 0; i < 3; i++) {
        const m = await getOne(sch, rq);
        assert.match(m.properties.replyTo, /^amq\.rabbitmq\.reply-to\./, 'the server sees a reply name');
        sch.sendToQueue(m.properties.replyTo, Buffer.from(`re:${m.content}`), {correlationId: m.properties.correlationId});
        sch.ack(m);
      }
      const got = [];
      for (let i = 0; i < 3; i++) {
        const r = await replies.next(`reply ${i}`);
        got.push([r.properties.correlationId, r.content.toString()]);
      }
      got.sort();
      assert.deepEqual(got, [['c0', 're:req-0'], ['c1', 're:req-1'], ['c2', 're:req-2']], 'replies');
      await sch.deleteQueue(rq, {});
      await server.close();
      await conn.close();
    },

    'consumer-cancel': async () => {
      const conn = await connect();
      const ch = await open(conn);
      const q = name('q');
      await ch.assertQueue(q, {exclusive: false, autoDelete: false, durable: false});
      const d = new Deliveries();
      await ch.consume(q, d.push, {noAck: true});
      ch.sendToQueue(q, Buffer.from('before'));
      assert.equal((await d.next('before')).content.toString(), 'before', 'delivery');
      const other = await open(conn);
      await other.deleteQueue(q, {});
      // amqplib calls the consumer with null when the broker cancels it.
      assert.equal(await d.next('basic.cancel from the broker'), null, 'consumer told of the cancel');
      const q2 = name('q2');
      await ch.assertQueue(q2, {exclusive: true});
      const d2 = new Deliveries();
      const {consumerTag} = await ch.consume(q2, d2.push, {noAck: true});
      await ch.cancel(consumerTag);
      ch.sendToQueue(q2, Buffer.from('after-cancel'));
      await d2.none(300, 'no delivery after basic.cancel');
      assert.equal((await ch.checkQueue(q2)).messageCount, 1, 'message stays queued');
      await conn.close();
    },
  };
}

function requestRestart() {
  process.stdout.write('WARREN-INTEROP:restart-broker\n');
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (chunk) => {
      buf += chunk;
      if (buf.includes('\n')) {
        process.stdin.off('data', onData);
        process.stdin.pause();
        const answer = buf.trim();
        if (answer === 'restarted') resolve();
        else reject(new Error(`the harness could not restart the broker: ${answer}`));
      }
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', onData);
    process.stdin.resume();
  });
}

async function run(all) {
  const arg = process.argv[2];
  if (arg === '--list') {
    for (const n of Object.keys(all)) console.log(n);
    return;
  }
  const fn = all[arg];
  if (!fn) {
    console.error(`unknown scenario ${arg}; --list shows them`);
    process.exit(2);
  }
  const timer = setTimeout(() => {
    console.error('FAILED: scenario timed out after 50s');
    process.exit(1);
  }, 50000);
  try {
    await fn();
  } catch (e) {
    console.error(e && e.stack ? e.stack : e);
    console.error(`FAILED: ${e && e.message ? e.message : e}`);
    process.exit(1);
  }
  clearTimeout(timer);
  console.log('ok');
  process.exit(0);
}

module.exports = {scenarios, run, requestRestart, makeName, closeOf, Deliveries, sleep, URL, SHUTDOWN_TEXT};
