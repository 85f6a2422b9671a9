// Interop scenarios for amqplib's promise API (require('amqplib')), and connection recovery
// after a broker restart through amqp-connection-manager. `node promise_api.js --list` lists
// the scenarios; `node promise_api.js NAME` runs one against $AMQP_URL.
'use strict';

const assert = require('node:assert/strict');
const amqp = require('amqplib');
const acm = require('amqp-connection-manager');
const {scenarios, run, requestRestart, makeName, closeOf, Deliveries, sleep, URL, SHUTDOWN_TEXT} = require('./scenarios');

const CLIENT = 'amqplib-promise';
const all = scenarios({
  client: CLIENT,
  connect: (url, opts) => amqp.connect(url, opts),
  heartbeat: (conn) => conn.connection.heartbeat,
});

all.recovery = async () => {
  const name = makeName(CLIENT);
  const q = name('q');
  const conn = acm.connect([URL], {
    reconnectTimeInSeconds: 0.3,
    connectionOptions: {clientProperties: {connection_name: name('recovery')}},
  });
  const disconnects = [];
  let connects = 0;
  conn.on('disconnect', ({err}) => disconnects.push(err));
  conn.on('connect', () => connects++);
  const d = new Deliveries();
  // The setup runs on every (re)connection: it redeclares the queue and its consumer.
  const channel = conn.createChannel({
    setup: async (ch) => {
      await ch.assertQueue(q, {durable: false, autoDelete: true});
      await ch.consume(q, d.push, {noAck: true});
    },
  });
  await channel.waitForConnect();
  await channel.sendToQueue(q, Buffer.from('before'));
  assert.equal((await d.next('before')).content.toString(), 'before', 'before the restart');
  await requestRestart();
  const deadline = Date.now() + 20000;
  while (connects < 2) {
    assert.ok(Date.now() < deadline, 'reconnected within 20s');
    await sleep(50);
  }
  // Resolves once the broker confirms it (amqp-connection-manager uses a confirm channel).
  await channel.sendToQueue(q, Buffer.from('after'));
  assert.equal((await d.next('after')).content.toString(), 'after', 'the recovered consumer');
  await channel.close();
  await conn.close();
  // Checked last, so that a wrong text does not hide whether recovery works.
  assert.ok(disconnects.length >= 1, 'the disconnect was reported');
  assert.deepEqual(closeOf(disconnects[0]), [320, SHUTDOWN_TEXT], 'connection.close at the restart');
};

run(all);
