// Interop scenarios for the RabbitMQ Java client (Debian's librabbitmq-client-java, 5.x),
// compiled with javac by tests/interop/setup.sh. `java Interop --list` lists the scenarios;
// `java Interop NAME` runs one against $AMQP_URL and exits 0 when it passes.

import com.rabbitmq.client.*;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.*;
import java.util.concurrent.*;

public class Interop {
    static final String URL = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    static final String PREFIX = env("WARREN_INTEROP_PREFIX", "interop-" + ProcessHandle.current().pid());
    static final String SHUTDOWN_TEXT =
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

    static String env(String k, String def) {
        String v = System.getenv(k);
        return v == null || v.isEmpty() ? def : v;
    }

    static String name(String... parts) {
        return PREFIX + ".java." + String.join(".", parts);
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static void eq(Object actual, Object expected, String what) {
        if (!Objects.deepEquals(actual, expected)) {
            throw new AssertionError(what + ": expected " + show(expected) + ", got " + show(actual));
        }
    }

    static String show(Object o) {
        if (o instanceof byte[]) return Arrays.toString((byte[]) o);
        return o == null ? "null" : o + " (" + o.getClass().getSimpleName() + ")";
    }

    static ConnectionFactory factory() throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(URL);
        f.setAutomaticRecoveryEnabled(false);
        return f;
    }

    static Connection connect() throws Exception {
        return factory().newConnection();
    }

    static String declare(Channel ch, String q) throws IOException {
        return ch.queueDeclare(q, false, true, false, null).getQueue();
    }

    static byte[] b(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String s(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    static final AMQP.BasicProperties NONE = new AMQP.BasicProperties();

    /** Publishes a sentinel to q and returns the bodies that were ahead of it. */
    static List<String> sentinelDrain(Channel ch, String q) throws Exception {
        ch.basicPublish("", q, NONE, b("sentinel"));
        List<String> got = new ArrayList<>();
        long deadline = System.currentTimeMillis() + 5000;
        while (true) {
            GetResponse r = ch.basicGet(q, true);
            if (r == null) {
                check(System.currentTimeMillis() < deadline, "sentinel never reached " + q);
                Thread.sleep(10);
                continue;
            }
            if (s(r.getBody()).equals("sentinel")) return got;
            got.add(s(r.getBody()));
        }
    }

    static GetResponse getOne(Channel ch, String q) throws Exception {
        long deadline = System.currentTimeMillis() + 5000;
        while (true) {
            GetResponse r = ch.basicGet(q, false);
            if (r != null) return r;
            check(System.currentTimeMillis() < deadline, "no message in " + q);
            Thread.sleep(10);
        }
    }

    static int messageCount(Channel ch, String q) throws IOException {
        return ch.queueDeclarePassive(q).getMessageCount();
    }

    interface Action {
        void run() throws Exception;
    }

    /** Runs an action that must make the broker close the channel; returns [code, text]. */
    static List<Object> closeOf(Action a) throws Exception {
        try {
            a.run();
        } catch (IOException | ShutdownSignalException e) {
            // A synchronous call fails with an IOException caused by the close; a call made
            // after the close arrived fails with AlreadyClosedException, itself the signal.
            Throwable c = e instanceof IOException ? e.getCause() : e;
            if (c instanceof ShutdownSignalException) {
                Method m = ((ShutdownSignalException) c).getReason();
                if (m instanceof AMQP.Channel.Close) {
                    AMQP.Channel.Close close = (AMQP.Channel.Close) m;
                    return List.of(close.getReplyCode(), close.getReplyText());
                }
            }
            throw e;
        }
        throw new AssertionError("the broker did not close the channel");
    }

    static String notFoundQueue(String q) {
        return "NOT_FOUND - no queue '" + q + "' in vhost '/'";
    }

    static String notFoundExchange(String x) {
        return "NOT_FOUND - no exchange '" + x + "' in vhost '/'";
    }

    /** A consumer that queues its deliveries and notes a broker-initiated cancel. */
    static class Collector extends DefaultConsumer {
        final BlockingQueue<Object[]> deliveries = new LinkedBlockingQueue<>();
        final BlockingQueue<String> cancels = new LinkedBlockingQueue<>();

        Collector(Channel ch) {
            super(ch);
        }

        @Override
        public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) {
            deliveries.add(new Object[] {env, p, body});
        }

        @Override
        public void handleCancel(String tag) {
            cancels.add(tag);
        }

        Object[] next(String what) throws InterruptedException {
            Object[] d = deliveries.poll(5, TimeUnit.SECONDS);
            check(d != null, what + ": no delivery within 5s");
            return d;
        }

        void none(long millis, String what) throws InterruptedException {
            Object[] d = deliveries.poll(millis, TimeUnit.MILLISECONDS);
            check(d == null, what + ": unexpected delivery " + (d == null ? "" : s((byte[]) d[2])));
        }
    }

    static Envelope env(Object[] d) {
        return (Envelope) d[0];
    }

    static String body(Object[] d) {
        return s((byte[]) d[2]);
    }

    static void connectHeartbeat() throws Exception {
        ConnectionFactory f = factory();
        f.setRequestedHeartbeat(1);
        Connection conn = f.newConnection(name("hb"));
        eq(conn.getHeartbeat(), 1, "negotiated heartbeat");
        // The client gives up after missing the broker's heartbeats for a few intervals, the
        // broker after 2 without the client's: idle past both.
        Thread.sleep(4000);
        check(conn.isOpen(), "connection open after idling: " + conn.getCloseReason());
        Channel ch = conn.createChannel();
        String q = ch.queueDeclare().getQueue();
        check(q.startsWith("amq.gen-"), "server-named queue " + q);
        conn.close();
        check(!conn.isOpen(), "connection closed");
    }

    static void exchanges() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = declare(ch, name("q"));
            for (String kind : List.of("direct", "fanout", "topic", "headers")) {
                String x = name("x", kind);
                String key = "k1", rk = "k1";
                Map<String, Object> args = null;
                AMQP.BasicProperties props = NONE;
                switch (kind) {
                    case "topic":
                        key = "k.*";
                        rk = "k.1";
                        break;
                    case "fanout":
                        key = "ignored";
                        rk = "other";
                        break;
                    case "headers":
                        key = "";
                        rk = "";
                        args = Map.of("x-match", "all", "h", "v");
                        props = new AMQP.BasicProperties.Builder().headers(Map.of("h", "v")).build();
                        break;
                    default:
                }
                ch.exchangeDeclare(x, kind, false, false, null);
                ch.exchangeDeclarePassive(x);
                ch.queueBind(q, x, key, args);
                ch.basicPublish(x, rk, props, b("bound-" + kind));
                eq(sentinelDrain(ch, q), List.of("bound-" + kind), kind + ": routed while bound");
                ch.queueUnbind(q, x, key, args);
                ch.basicPublish(x, rk, props, b("unbound"));
                eq(sentinelDrain(ch, q), List.of(), kind + ": routed after unbind");
                ch.exchangeDelete(x);
                final Channel c = ch;
                eq(closeOf(() -> c.exchangeDeclarePassive(x)), List.of(404, notFoundExchange(x)),
                        "passive declare after delete");
                ch = conn.createChannel();
            }
            String src = name("x", "src"), dst = name("x", "dst");
            ch.exchangeDeclare(src, "direct");
            ch.exchangeDeclare(dst, "fanout");
            ch.queueBind(q, dst, "");
            ch.exchangeBind(dst, src, "e2e");
            ch.basicPublish(src, "e2e", NONE, b("via-e2e"));
            ch.basicPublish(src, "other", NONE, b("not-routed"));
            eq(sentinelDrain(ch, q), List.of("via-e2e"), "exchange-to-exchange routing");
            ch.exchangeUnbind(dst, src, "e2e");
            ch.basicPublish(src, "e2e", NONE, b("after-unbind"));
            eq(sentinelDrain(ch, q), List.of(), "after exchange.unbind");
            ch.exchangeDelete(src);
            ch.exchangeDelete(dst);
            ch.exchangeDeclarePassive("amq.headers");
        }
    }

    static void topicRouting() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String x = name("topic");
            ch.exchangeDeclare(x, "topic", false, true, null);
            Map<String, List<String>> bindings = new LinkedHashMap<>();
            bindings.put("a.*", List.of("a.b"));
            bindings.put("a.#", List.of("a.b", "a.b.c", "a", "a.b.c.d"));
            bindings.put("#.c", List.of("a.b.c", "x.c", "c"));
            bindings.put("*.b.*", List.of("a.b.c"));
            Map<String, String> queues = new LinkedHashMap<>();
            for (String bk : bindings.keySet()) {
                String q = declare(ch, name("t", bk));
                ch.queueBind(q, x, bk);
                queues.put(bk, q);
            }
            for (String k : List.of("a.b", "a.b.c", "a", "x.c", "a.b.c.d", "c", "b")) {
                ch.basicPublish(x, k, NONE, b(k));
            }
            for (String bk : bindings.keySet()) {
                eq(sentinelDrain(ch, queues.get(bk)), bindings.get(bk), "messages matching " + bk);
            }
        }
    }

    static void headersRouting() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String x = name("headers");
            ch.exchangeDeclare(x, "headers", false, true, null);
            String qAll = declare(ch, name("all")), qAny = declare(ch, name("any"));
            ch.queueBind(qAll, x, "", Map.of("x-match", "all", "format", "pdf", "type", "report"));
            ch.queueBind(qAny, x, "", Map.of("x-match", "any", "format", "pdf", "type", "report"));
            List<Map<String, Object>> headers = List.of(
                    Map.of("format", "pdf", "type", "report"),
                    Map.of("format", "pdf"),
                    Map.of("format", "zip", "type", "log"),
                    Map.of(),
                    Map.of("format", "pdf", "type", "report", "extra", 1));
            for (int i = 0; i < headers.size(); i++) {
                ch.basicPublish(x, "", new AMQP.BasicProperties.Builder().headers(headers.get(i)).build(), b("m" + i));
            }
            eq(sentinelDrain(ch, qAll), List.of("m0", "m4"), "x-match=all");
            eq(sentinelDrain(ch, qAny), List.of("m0", "m1", "m4"), "x-match=any");
        }
    }

    static void ackNackReject() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = declare(ch, name("q"));
            for (String m : List.of("m1", "m2", "m3", "m4")) ch.basicPublish("", q, NONE, b(m));
            ch.basicQos(1);
            Collector c = new Collector(ch);
            String tag = ch.basicConsume(q, false, c);
            Object[] d = c.next("m1");
            eq(body(d), "m1", "first delivery");
            ch.basicAck(env(d).getDeliveryTag(), false);
            d = c.next("m2");
            eq(List.of(body(d), env(d).isRedeliver()), List.of("m2", false), "second delivery");
            ch.basicNack(env(d).getDeliveryTag(), false, true);
            d = c.next("m2 again");
            eq(List.of(body(d), env(d).isRedeliver()), List.of("m2", true), "nacked message redelivered");
            ch.basicAck(env(d).getDeliveryTag(), false);
            d = c.next("m3");
            eq(body(d), "m3", "after the requeued one");
            ch.basicReject(env(d).getDeliveryTag(), false);
            d = c.next("m4");
            eq(List.of(body(d), env(d).isRedeliver()), List.of("m4", false), "rejected message dropped");
            ch.basicReject(env(d).getDeliveryTag(), true);
            d = c.next("m4 again");
            eq(List.of(body(d), env(d).isRedeliver()), List.of("m4", true), "reject with requeue redelivers");
            ch.basicAck(env(d).getDeliveryTag(), false);
            ch.basicCancel(tag);
            ch.basicPublish("", q, NONE, b("m5"));
            ch.basicPublish("", q, NONE, b("m6"));
            getOne(ch, q);
            GetResponse m6 = getOne(ch, q);
            eq(s(m6.getBody()), "m6", "last message");
            ch.basicNack(m6.getEnvelope().getDeliveryTag(), true, false);
            eq(messageCount(ch, q), 0, "queue empty at the end");
        }
    }

    static void basicGet() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = declare(ch, name("q"));
            check(ch.basicGet(q, false) == null, "basic.get on an empty queue answers get-empty");
            for (String m : List.of("g1", "g2", "g3")) ch.basicPublish("", q, NONE, b(m));
            long deadline = System.currentTimeMillis() + 5000;
            while (messageCount(ch, q) != 3) {
                check(System.currentTimeMillis() < deadline, "3 messages queued");
                Thread.sleep(10);
            }
            GetResponse r = getOne(ch, q);
            eq(List.of(s(r.getBody()), r.getMessageCount(), r.getEnvelope().isRedeliver(),
                            r.getEnvelope().getRoutingKey(), r.getEnvelope().getExchange()),
                    List.of("g1", 2, false, q, ""), "first get");
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            r = ch.basicGet(q, true);
            eq(List.of(s(r.getBody()), r.getMessageCount()), List.of("g2", 1), "no-ack get");
            r = getOne(ch, q);
            eq(s(r.getBody()), "g3", "third get");
            ch.basicReject(r.getEnvelope().getDeliveryTag(), true);
            r = getOne(ch, q);
            eq(List.of(s(r.getBody()), r.getEnvelope().isRedeliver(), r.getMessageCount()),
                    List.of("g3", true, 0), "get after requeue");
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            check(ch.basicGet(q, false) == null, "queue empty at the end");
        }
    }

    static void prefetch() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = declare(ch, name("q"));
            for (int i = 0; i < 5; i++) ch.basicPublish("", q, NONE, b("p" + i));
            ch.basicQos(2);
            Collector c = new Collector(ch);
            ch.basicConsume(q, false, c);
            Object[] d0 = c.next("p0"), d1 = c.next("p1");
            eq(List.of(body(d0), body(d1)), List.of("p0", "p1"), "first two");
            c.none(700, "prefetch 2 with nothing acked");
            ch.basicAck(env(d0).getDeliveryTag(), false);
            Object[] d2 = c.next("p2");
            eq(body(d2), "p2", "one more after one ack");
            c.none(500, "still at the prefetch limit");
            ch.basicAck(env(d2).getDeliveryTag(), true);
            Object[] d3 = c.next("p3"), d4 = c.next("p4");
            eq(List.of(body(d3), body(d4)), List.of("p3", "p4"), "the rest");
            ch.basicAck(env(d4).getDeliveryTag(), true);
        }
    }

    static void publisherConfirms() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            ch.confirmSelect();
            List<Object> confirms = Collections.synchronizedList(new ArrayList<>());
            ch.addConfirmListener(new ConfirmListener() {
                public void handleAck(long tag, boolean multiple) {
                    confirms.add("ack " + tag + (multiple ? " multiple" : ""));
                }

                public void handleNack(long tag, boolean multiple) {
                    confirms.add("nack " + tag + (multiple ? " multiple" : ""));
                }
            });
            BlockingQueue<Integer> returns = new LinkedBlockingQueue<>();
            ch.addReturnListener((code, text, x, key, p, body) -> returns.add(code));
            String q = declare(ch, name("q"));
            for (int i = 0; i < 50; i++) ch.basicPublish("", q, NONE, b("c" + i));
            check(ch.waitForConfirms(5000), "every publish acked");
            eq(messageCount(ch, q), 50, "confirmed messages queued");
            ch.basicPublish("amq.direct", name("nowhere"), true, NONE, b("r"));
            check(ch.waitForConfirms(5000), "returned message acked");
            eq(returns.poll(5, TimeUnit.SECONDS), 312, "basic.return reply code");
            String full = ch.queueDeclare(name("full"), false, true, false,
                    Map.of("x-max-length", 1, "x-overflow", "reject-publish")).getQueue();
            ch.basicPublish("", full, NONE, b("fits"));
            check(ch.waitForConfirms(5000), "the first publish to the full queue acked");
            ch.basicPublish("", full, NONE, b("overflows"));
            check(!ch.waitForConfirms(5000), "the publish past x-max-length nacked");
            check(confirms.stream().anyMatch(c -> c.toString().startsWith("nack 53")),
                    "nack of publish 53 in " + confirms);
            eq(messageCount(ch, full), 1, "the full queue kept one");
        }
    }

    static void mandatoryReturn() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            BlockingQueue<List<Object>> returns = new LinkedBlockingQueue<>();
            ch.addReturnListener((code, text, x, key, p, body) ->
                    returns.add(List.of(code, text, x, key, s(body), p.getMessageId(), p.getHeaders().get("h").toString())));
            String key = name("unroutable");
            ch.basicPublish("amq.direct", key, true,
                    new AMQP.BasicProperties.Builder().messageId("ret-1").headers(Map.of("h", "v")).build(),
                    b("come back"));
            String q = declare(ch, name("q"));
            ch.basicPublish("", q, true, NONE, b("routed"));
            eq(returns.poll(5, TimeUnit.SECONDS),
                    List.of(312, "NO_ROUTE", "amq.direct", key, "come back", "ret-1", "v"), "basic.return");
            ch.basicPublish("amq.direct", key, false, NONE, b("dropped"));
            eq(sentinelDrain(ch, q), List.of("routed"), "routed mandatory message");
            eq(returns.poll(300, TimeUnit.MILLISECONDS), null, "only the unroutable message returned");
        }
    }

    static void transactions() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = declare(ch, name("q"));
            ch.txSelect();
            ch.basicPublish("", q, NONE, b("rolled-back"));
            eq(messageCount(ch, q), 0, "uncommitted publish invisible");
            ch.txRollback();
            eq(messageCount(ch, q), 0, "after rollback");
            ch.basicPublish("", q, NONE, b("committed"));
            ch.txCommit();
            GetResponse r = getOne(ch, q);
            eq(s(r.getBody()), "committed", "body");
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            ch.txRollback();
            ch.basicRecover(true);
            r = getOne(ch, q);
            eq(List.of(s(r.getBody()), r.getEnvelope().isRedeliver()), List.of("committed", true),
                    "back after the rolled-back ack");
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            ch.txCommit();
            check(ch.basicGet(q, false) == null, "queue empty after the committed ack");
        }
    }

    static String digest(byte[] b) throws Exception {
        byte[] h = MessageDigest.getInstance("SHA-256").digest(b);
        StringBuilder sb = new StringBuilder(b.length + " bytes sha256 ");
        for (int i = 0; i < 8; i++) sb.append(String.format("%02x", h[i]));
        return sb.toString();
    }

    static void bodies() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = declare(ch, name("q"));
            int frameBody = 131072 - 8;
            byte[] large = new byte[10 * 1024 * 1024];
            for (int i = 0; i < large.length; i++) large[i] = (byte) i;
            byte[] y = new byte[frameBody], z = new byte[frameBody + 1];
            Arrays.fill(y, (byte) 'y');
            Arrays.fill(z, (byte) 'z');
            List<byte[]> want = List.of(new byte[0], b("x"), y, z, large);
            for (byte[] body : want) ch.basicPublish("", q, NONE, body);
            Collector c = new Collector(ch);
            ch.basicConsume(q, true, c);
            for (int i = 0; i < want.size(); i++) {
                eq(digest((byte[]) c.next("body " + i)[2]), digest(want.get(i)), "body " + i);
            }
        }
    }

    static void properties() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = declare(ch, name("q"));
            Map<String, Object> headers = new HashMap<>();
            headers.put("string", "hello ✓");
            headers.put("bytes", new byte[] {0, 1, (byte) 0xfe, (byte) 0xff});
            headers.put("byte", (byte) -8);
            headers.put("short", (short) -1600);
            headers.put("int", -123456);
            headers.put("long", (1L << 40) + 7);
            headers.put("bool-true", true);
            headers.put("bool-false", false);
            headers.put("float", 1.5f);
            headers.put("double", 3.25d);
            headers.put("decimal", new BigDecimal("12.345"));
            headers.put("timestamp", new Date(1714979289000L));
            headers.put("table", Map.of("nested", "yes", "n", 1, "deeper", Map.of("x", "y")));
            headers.put("array", List.of("a", 1, true, Map.of("k", "v"), List.of("inner")));
            headers.put("void", null);
            AMQP.BasicProperties sent = new AMQP.BasicProperties.Builder()
                    .contentType("application/json").contentEncoding("utf-8").headers(headers)
                    .deliveryMode(2).priority(5).correlationId("corr-1").replyTo("reply-queue")
                    .expiration("60000").messageId("msg-1").timestamp(new Date(1700000000000L))
                    .type("kind").userId("guest").appId("interop").clusterId("cluster").build();
            ch.basicPublish("", q, sent, b("{}"));
            GetResponse r = getOne(ch, q);
            AMQP.BasicProperties p = r.getProps();
            eq(s(r.getBody()), "{}", "body");
            eq(Arrays.asList(p.getContentType(), p.getContentEncoding(), p.getDeliveryMode(), p.getPriority(),
                            p.getCorrelationId(), p.getReplyTo(), p.getExpiration(), p.getMessageId(),
                            p.getTimestamp(), p.getType(), p.getUserId(), p.getAppId(), p.getClusterId()),
                    Arrays.asList(sent.getContentType(), sent.getContentEncoding(), sent.getDeliveryMode(),
                            sent.getPriority(), sent.getCorrelationId(), sent.getReplyTo(), sent.getExpiration(),
                            sent.getMessageId(), sent.getTimestamp(), sent.getType(), sent.getUserId(),
                            sent.getAppId(), sent.getClusterId()),
                    "properties");
            eq(new TreeSet<>(p.getHeaders().keySet()), new TreeSet<>(headers.keySet()), "header names");
            for (Map.Entry<String, Object> e : headers.entrySet()) {
                eq(normalize(p.getHeaders().get(e.getKey())), e.getValue(), "header " + e.getKey());
            }
            ch.basicPublish("", q, NONE, b("bare"));
            p = getOne(ch, q).getProps();
            eq(Arrays.asList(p.getHeaders(), p.getContentType(), p.getDeliveryMode()),
                    Arrays.asList(null, null, null), "empty properties");
        }
    }

    /** Received strings are LongStrings; turn them (also inside tables and arrays) into String. */
    static Object normalize(Object o) {
        if (o instanceof LongString) return o.toString();
        if (o instanceof Map) {
            Map<String, Object> m = new HashMap<>();
            ((Map<?, ?>) o).forEach((k, v) -> m.put(k.toString(), normalize(v)));
            return m;
        }
        if (o instanceof List) {
            List<Object> l = new ArrayList<>();
            for (Object v : (List<?>) o) l.add(normalize(v));
            return l;
        }
        return o;
    }

    static void channelErrors() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String missing = name("missing");
            final Channel c1 = ch;
            eq(closeOf(() -> c1.queueDeclarePassive(missing)), List.of(404, notFoundQueue(missing)),
                    "passive declare of a missing queue");
            check(!ch.isOpen(), "channel closed after 404");
            ch = conn.createChannel();
            String q = ch.queueDeclare(name("q"), false, false, true, null).getQueue();
            final Channel c2 = ch;
            eq(closeOf(() -> c2.queueDeclare(q, true, false, true, null)),
                    List.of(406, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '" + q
                            + "' in vhost '/': received 'true' but current is 'false'"),
                    "redeclare with another durable flag");
            ch = conn.createChannel();
            String nox = name("no-exchange");
            final Channel c3 = ch;
            eq(closeOf(() -> {
                c3.basicPublish(nox, "k", NONE, b("lost"));
                c3.queueDeclarePassive(q);
            }), List.of(404, notFoundExchange(nox)), "publish to a missing exchange");
            ch = conn.createChannel();
            ch.basicPublish("", q, NONE, b("still works"));
            eq(s(getOne(ch, q).getBody()), "still works", "a new channel works after the errors");
            check(conn.isOpen(), "connection survives channel errors");
            ch.queueDelete(q);
        }
    }

    static void consumerCancel() throws Exception {
        try (Connection conn = connect()) {
            Channel ch = conn.createChannel();
            String q = ch.queueDeclare(name("q"), false, false, false, null).getQueue();
            Collector c = new Collector(ch);
            String tag = ch.basicConsume(q, true, c);
            ch.basicPublish("", q, NONE, b("before"));
            eq(body(c.next("before")), "before", "delivery");
            conn.createChannel().queueDelete(q);
            eq(c.cancels.poll(5, TimeUnit.SECONDS), tag, "basic.cancel from the broker");
            String q2 = declare(ch, name("q2"));
            Collector c2 = new Collector(ch);
            String tag2 = ch.basicConsume(q2, true, c2);
            ch.basicCancel(tag2);
            ch.basicPublish("", q2, NONE, b("after-cancel"));
            c2.none(300, "no delivery after basic.cancel");
            eq(messageCount(ch, q2), 1, "message stays queued");
        }
    }

    static void requestRestart() throws IOException {
        System.out.println("WARREN-INTEROP:restart-broker");
        System.out.flush();
        String answer = new BufferedReader(new InputStreamReader(System.in)).readLine();
        check("restarted".equals(answer), "the harness could not restart the broker: " + answer);
    }

    /** Automatic recovery: the client reconnects, redeclares its topology and consumers. */
    static void recovery() throws Exception {
        ConnectionFactory f = factory();
        f.setAutomaticRecoveryEnabled(true);
        f.setTopologyRecoveryEnabled(true);
        f.setNetworkRecoveryInterval(300);
        Connection conn = f.newConnection(name("recovery"));
        BlockingQueue<ShutdownSignalException> shutdowns = new LinkedBlockingQueue<>();
        CountDownLatch recovered = new CountDownLatch(1);
        conn.addShutdownListener(shutdowns::add);
        ((Recoverable) conn).addRecoveryListener(new RecoveryListener() {
            public void handleRecovery(Recoverable r) {
                recovered.countDown();
            }

            public void handleRecoveryStarted(Recoverable r) {
            }
        });
        Channel ch = conn.createChannel();
        String q = ch.queueDeclare(name("q"), false, false, true, null).getQueue();
        Collector c = new Collector(ch);
        ch.basicConsume(q, true, c);
        ch.basicPublish("", q, NONE, b("before"));
        eq(body(c.next("before")), "before", "before the restart");
        requestRestart();
        ShutdownSignalException sse = shutdowns.poll(10, TimeUnit.SECONDS);
        check(sse != null, "the connection survived a broker restart");
        check(sse.isHardError() && !sse.isInitiatedByApplication(), "closed by the broker: " + sse);
        AMQP.Connection.Close close = (AMQP.Connection.Close) sse.getReason();
        eq(close.getReplyCode(), 320, "connection.close reply code");
        check(recovered.await(20, TimeUnit.SECONDS), "recovered within 20s");
        ch.basicPublish("", q, NONE, b("after"));
        eq(body(c.next("after")), "after", "the recovered consumer gets messages");
        conn.close();
        // Checked last, so that a wrong text does not hide whether recovery works.
        eq(close.getReplyText(), SHUTDOWN_TEXT, "connection.close text at the restart");
    }

    public static void main(String[] args) throws Exception {
        Map<String, Action> scenarios = new LinkedHashMap<>();
        scenarios.put("connect-heartbeat", Interop::connectHeartbeat);
        scenarios.put("exchanges", Interop::exchanges);
        scenarios.put("topic-routing", Interop::topicRouting);
        scenarios.put("headers-routing", Interop::headersRouting);
        scenarios.put("ack-nack-reject", Interop::ackNackReject);
        scenarios.put("basic-get", Interop::basicGet);
        scenarios.put("prefetch", Interop::prefetch);
        scenarios.put("publisher-confirms", Interop::publisherConfirms);
        scenarios.put("mandatory-return", Interop::mandatoryReturn);
        scenarios.put("transactions", Interop::transactions);
        scenarios.put("bodies", Interop::bodies);
        scenarios.put("properties", Interop::properties);
        scenarios.put("channel-errors", Interop::channelErrors);
        scenarios.put("consumer-cancel", Interop::consumerCancel);
        scenarios.put("recovery", Interop::recovery);
        if (args.length != 1) {
            System.err.println("usage: Interop --list | SCENARIO");
            System.exit(2);
        }
        if (args[0].equals("--list")) {
            scenarios.keySet().forEach(System.out::println);
            return;
        }
        Action a = scenarios.get(args[0]);
        if (a == null) {
            System.err.println("unknown scenario " + args[0] + "; --list shows them");
            System.exit(2);
        }
        try {
            a.run();
        } catch (Throwable t) {
            t.printStackTrace();
            System.err.println("FAILED: " + t);
            System.out.flush();
            Runtime.getRuntime().halt(1);
        }
        System.out.println("ok");
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }
}
