// Interop scenarios for amqplib's callback API (require('amqplib/callback_api')). The shared
// scenarios are written promise-style; an adapter calls each callback-API method with a
// callback in its declared position and turns the callback into a promise.
// `node callback_api.js --list` lists the scenarios; `node callback_api.js NAME` runs one.
'use strict';

const amqp = require('amqplib/callback_api');
const {scenarios, run} = require('./scenarios');

// The callback-API methods that take a completion callback as their last parameter.
const WITH_CALLBACK = new Set([
  'close', 'createChannel', 'createConfirmChannel', 'assertQueue', 'checkQueue', 'deleteQueue',
  'purgeQueue', 'bindQueue', 'unbindQueue', 'assertExchange', 'checkExchange', 'deleteExchange',
  'bindExchange', 'unbindExchange', 'consume', 'cancel', 'get', 'prefetch', 'recover',
  'waitForConfirms',
]);

function adapt(target) {
  if (target === null || typeof target !== 'object' || typeof target.on !== 'function') return target;
  return new Proxy(target, {
    get(obj, prop) {
      const v = obj[prop];
      if (typeof v !== 'function') return v;
      if (!WITH_CALLBACK.has(prop)) return v.bind(obj);
      return (...args) =>
        new Promise((resolve, reject) => {
          // Pad to the declared parameters so the callback lands in its own slot.
          const params = args.slice(0, v.length - 1);
          while (params.length < v.length - 1) params.push(undefined);
          v.call(obj, ...params, (err, ok) => (err ? reject(err) : resolve(adapt(ok))));
        });
    },
  });
}

run(
  scenarios({
    client: 'amqplib-callback',
    connect: (url, opts) =>
      new Promise((resolve, reject) => amqp.connect(url, opts || {}, (err, conn) => (err ? reject(err) : resolve(adapt(conn))))),
    heartbeat: (conn) => conn.connection.heartbeat,
  }),
);
