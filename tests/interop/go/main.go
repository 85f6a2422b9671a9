// Interop scenarios for amqp091-go (the RabbitMQ Go client), built offline against Debian's
// golang-github-rabbitmq-amqp091-go-dev in GOPATH mode. `interop-go --list` lists the
// scenarios; `interop-go NAME` runs one against $AMQP_URL and exits 0 when it passes.
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	url    = envOr("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
	prefix = envOr("WARREN_INTEROP_PREFIX", fmt.Sprintf("interop-%d", os.Getpid()))
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// name is a queue or exchange name unique to this run and scenario.
func name(parts ...string) string {
	return prefix + ".go." + strings.Join(parts, ".")
}

// failure aborts the scenario with a message.
type failure string

func fail(format string, args ...interface{}) {
	panic(failure(fmt.Sprintf(format, args...)))
}

func check(cond bool, format string, args ...interface{}) {
	if !cond {
		fail(format, args...)
	}
}

func eq(actual, expected interface{}, what string) {
	if !reflect.DeepEqual(actual, expected) {
		fail("%s: expected %#v, got %#v", what, expected, actual)
	}
}

func must(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func dial() *amqp.Connection {
	conn, err := amqp.Dial(url)
	must(err, "dial")
	return conn
}

func channel(conn *amqp.Connection) *amqp.Channel {
	ch, err := conn.Channel()
	must(err, "open a channel")
	return ch
}

func declareQueue(ch *amqp.Channel, q string, args amqp.Table) string {
	got, err := ch.QueueDeclare(q, false, false, true, false, args)
	must(err, "declare queue "+q)
	return got.Name
}

func publish(ch *amqp.Channel, x, key string, body []byte, p amqp.Publishing) {
	p.Body = body
	must(ch.Publish(x, key, false, false, p), "publish")
}

// sentinelDrain publishes a sentinel to q and returns the bodies that were ahead of it.
func sentinelDrain(ch *amqp.Channel, q string) []string {
	publish(ch, "", q, []byte("sentinel"), amqp.Publishing{})
	got := []string{}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, ok, err := ch.Get(q, true)
		must(err, "basic.get")
		if !ok {
			check(time.Now().Before(deadline), "sentinel never reached %s", q)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if string(m.Body) == "sentinel" {
			return got
		}
		got = append(got, string(m.Body))
	}
}

func getOne(ch *amqp.Channel, q string) amqp.Delivery {
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, ok, err := ch.Get(q, false)
		must(err, "basic.get")
		if ok {
			return m
		}
		check(time.Now().Before(deadline), "no message in %s", q)
		time.Sleep(10 * time.Millisecond)
	}
}

func messageCount(ch *amqp.Channel, q string) int {
	got, err := ch.QueueDeclarePassive(q, false, false, true, false, nil)
	must(err, "passive declare "+q)
	return got.Messages
}

// closedWith checks that err is the broker closing the channel with code and text.
func closedWith(err error, code int, text, what string) {
	var e *amqp.Error
	if !errors.As(err, &e) {
		fail("%s: expected a channel close %d, got %v", what, code, err)
	}
	eq([]interface{}{e.Code, e.Reason}, []interface{}{code, text}, what)
}

func notFoundQueue(q string) string { return fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", q) }
func notFoundExchange(x string) string {
	return fmt.Sprintf("NOT_FOUND - no exchange '%s' in vhost '/'", x)
}

func next(ds <-chan amqp.Delivery, what string) amqp.Delivery {
	select {
	case d, ok := <-ds:
		check(ok, "%s: the delivery channel closed", what)
		return d
	case <-time.After(5 * time.Second):
		fail("%s: no delivery within 5s", what)
	}
	return amqp.Delivery{}
}

func none(ds <-chan amqp.Delivery, wait time.Duration, what string) {
	select {
	case d := <-ds:
		fail("%s: unexpected delivery %q", what, d.Body)
	case <-time.After(wait):
	}
}

func connectHeartbeat() {
	conn, err := amqp.DialConfig(url, amqp.Config{
		Heartbeat:  time.Second,
		Properties: amqp.Table{"connection_name": name("hb")},
	})
	must(err, "dial")
	eq(conn.Config.Heartbeat, time.Second, "negotiated heartbeat")
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	// amqp091-go closes the connection when nothing arrives for 3 heartbeat intervals, and
	// the broker when it hears nothing for 2: idle past both.
	select {
	case e := <-closed:
		fail("connection closed while idle: %v", e)
	case <-time.After(4 * time.Second):
	}
	ch := channel(conn)
	q := declareQueue(ch, "", nil)
	check(strings.HasPrefix(q, "amq.gen-"), "server-named queue %q", q)
	must(conn.Close(), "close")
	check(conn.IsClosed(), "connection closed")
}

func exchanges() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q := declareQueue(ch, name("q"), nil)
	for _, kind := range []string{"direct", "fanout", "topic", "headers"} {
		x := name("x", kind)
		key, rk := "k1", "k1"
		var args amqp.Table
		var headers amqp.Table
		switch kind {
		case "topic":
			key, rk = "k.*", "k.1"
		case "fanout":
			key, rk = "ignored", "other"
		case "headers":
			key, rk = "", ""
			args = amqp.Table{"x-match": "all", "h": "v"}
			headers = amqp.Table{"h": "v"}
		}
		must(ch.ExchangeDeclare(x, kind, false, false, false, false, nil), "declare "+kind)
		must(ch.ExchangeDeclarePassive(x, kind, false, false, false, false, nil), "passive "+kind)
		must(ch.QueueBind(q, key, x, false, args), "bind")
		publish(ch, x, rk, []byte("bound-"+kind), amqp.Publishing{Headers: headers})
		eq(sentinelDrain(ch, q), []string{"bound-" + kind}, kind+": routed while bound")
		must(ch.QueueUnbind(q, key, x, args), "unbind")
		publish(ch, x, rk, []byte("unbound"), amqp.Publishing{Headers: headers})
		eq(sentinelDrain(ch, q), []string{}, kind+": routed after unbind")
		must(ch.ExchangeDelete(x, false, false), "delete")
		err := ch.ExchangeDeclarePassive(x, kind, false, false, false, false, nil)
		closedWith(err, 404, notFoundExchange(x), "passive declare after delete")
		ch = channel(conn)
	}
	src, dst := name("x", "src"), name("x", "dst")
	must(ch.ExchangeDeclare(src, "direct", false, false, false, false, nil), "declare src")
	must(ch.ExchangeDeclare(dst, "fanout", false, false, false, false, nil), "declare dst")
	must(ch.QueueBind(q, "", dst, false, nil), "bind to dst")
	must(ch.ExchangeBind(dst, "e2e", src, false, nil), "exchange.bind")
	publish(ch, src, "e2e", []byte("via-e2e"), amqp.Publishing{})
	publish(ch, src, "other", []byte("not-routed"), amqp.Publishing{})
	eq(sentinelDrain(ch, q), []string{"via-e2e"}, "exchange-to-exchange routing")
	must(ch.ExchangeUnbind(dst, "e2e", src, false, nil), "exchange.unbind")
	publish(ch, src, "e2e", []byte("after-unbind"), amqp.Publishing{})
	eq(sentinelDrain(ch, q), []string{}, "after exchange.unbind")
	must(ch.ExchangeDelete(src, false, false), "delete src")
	must(ch.ExchangeDelete(dst, false, false), "delete dst")
	must(ch.ExchangeDeclarePassive("amq.topic", "topic", true, false, false, false, nil), "amq.topic")
}

func topicRouting() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	x := name("topic")
	must(ch.ExchangeDeclare(x, "topic", false, true, false, false, nil), "declare")
	bindings := map[string][]string{
		"a.*":   {"a.b"},
		"a.#":   {"a.b", "a.b.c", "a", "a.b.c.d"},
		"#.c":   {"a.b.c", "x.c", "c"},
		"*.b.*": {"a.b.c"},
	}
	queues := map[string]string{}
	for b := range bindings {
		q := declareQueue(ch, name("t", b), nil)
		must(ch.QueueBind(q, b, x, false, nil), "bind")
		queues[b] = q
	}
	for _, k := range []string{"a.b", "a.b.c", "a", "x.c", "a.b.c.d", "c", "b"} {
		publish(ch, x, k, []byte(k), amqp.Publishing{})
	}
	for b, q := range queues {
		eq(sentinelDrain(ch, q), bindings[b], "messages matching "+b)
	}
}

func headersRouting() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	x := name("headers")
	must(ch.ExchangeDeclare(x, "headers", false, true, false, false, nil), "declare")
	qAll, qAny := declareQueue(ch, name("all"), nil), declareQueue(ch, name("any"), nil)
	must(ch.QueueBind(qAll, "", x, false, amqp.Table{"x-match": "all", "format": "pdf", "type": "report"}), "bind all")
	must(ch.QueueBind(qAny, "", x, false, amqp.Table{"x-match": "any", "format": "pdf", "type": "report"}), "bind any")
	cases := []struct {
		h          amqp.Table
		all, anyOf bool
	}{
		{amqp.Table{"format": "pdf", "type": "report"}, true, true},
		{amqp.Table{"format": "pdf"}, false, true},
		{amqp.Table{"format": "zip", "type": "log"}, false, false},
		{amqp.Table{}, false, false},
		{amqp.Table{"format": "pdf", "type": "report", "extra": int32(1)}, true, true},
	}
	wantAll, wantAny := []string{}, []string{}
	for i, c := range cases {
		body := fmt.Sprintf("m%d", i)
		publish(ch, x, "", []byte(body), amqp.Publishing{Headers: c.h})
		if c.all {
			wantAll = append(wantAll, body)
		}
		if c.anyOf {
			wantAny = append(wantAny, body)
		}
	}
	eq(sentinelDrain(ch, qAll), wantAll, "x-match=all")
	eq(sentinelDrain(ch, qAny), wantAny, "x-match=any")
}

func ackNackReject() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q := declareQueue(ch, name("q"), nil)
	for _, b := range []string{"m1", "m2", "m3", "m4"} {
		publish(ch, "", q, []byte(b), amqp.Publishing{})
	}
	must(ch.Qos(1, 0, false), "qos")
	ds, err := ch.Consume(q, "c1", false, false, false, false, nil)
	must(err, "consume")
	d := next(ds, "m1")
	eq(string(d.Body), "m1", "first delivery")
	must(d.Ack(false), "ack")
	d = next(ds, "m2")
	eq([]interface{}{string(d.Body), d.Redelivered}, []interface{}{"m2", false}, "second delivery")
	must(d.Nack(false, true), "nack requeue")
	d = next(ds, "m2 again")
	eq([]interface{}{string(d.Body), d.Redelivered}, []interface{}{"m2", true}, "nacked message redelivered")
	must(d.Ack(false), "ack")
	d = next(ds, "m3")
	eq(string(d.Body), "m3", "after the requeued one")
	must(d.Reject(false), "reject")
	d = next(ds, "m4")
	eq([]interface{}{string(d.Body), d.Redelivered}, []interface{}{"m4", false}, "rejected message dropped")
	must(d.Reject(true), "reject requeue")
	d = next(ds, "m4 again")
	eq([]interface{}{string(d.Body), d.Redelivered}, []interface{}{"m4", true}, "reject with requeue redelivers")
	must(d.Ack(false), "ack")
	must(ch.Cancel("c1", false), "cancel")
	// basic.nack with multiple=true, without requeue, drops both.
	publish(ch, "", q, []byte("m5"), amqp.Publishing{})
	publish(ch, "", q, []byte("m6"), amqp.Publishing{})
	getOne(ch, q)
	m6 := getOne(ch, q)
	eq(string(m6.Body), "m6", "last message")
	must(m6.Nack(true, false), "nack multiple")
	eq(messageCount(ch, q), 0, "queue empty at the end")
}

func basicGet() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q := declareQueue(ch, name("q"), nil)
	_, ok, err := ch.Get(q, false)
	must(err, "get")
	check(!ok, "basic.get on an empty queue answers get-empty")
	for _, b := range []string{"g1", "g2", "g3"} {
		publish(ch, "", q, []byte(b), amqp.Publishing{})
	}
	deadline := time.Now().Add(5 * time.Second)
	for messageCount(ch, q) != 3 {
		check(time.Now().Before(deadline), "3 messages queued")
		time.Sleep(10 * time.Millisecond)
	}
	m := getOne(ch, q)
	eq([]interface{}{string(m.Body), m.MessageCount, m.Redelivered, m.RoutingKey, m.Exchange},
		[]interface{}{"g1", uint32(2), false, q, ""}, "first get")
	must(m.Ack(false), "ack")
	m, ok, err = ch.Get(q, true)
	must(err, "get")
	eq([]interface{}{ok, string(m.Body), m.MessageCount}, []interface{}{true, "g2", uint32(1)}, "no-ack get")
	m = getOne(ch, q)
	eq(string(m.Body), "g3", "third get")
	must(m.Reject(true), "reject requeue")
	m = getOne(ch, q)
	eq([]interface{}{string(m.Body), m.Redelivered, m.MessageCount}, []interface{}{"g3", true, uint32(0)}, "get after requeue")
	must(m.Ack(false), "ack")
	_, ok, err = ch.Get(q, false)
	must(err, "get")
	check(!ok, "queue empty at the end")
}

func prefetch() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q := declareQueue(ch, name("q"), nil)
	for i := 0; i < 5; i++ {
		publish(ch, "", q, []byte(fmt.Sprintf("p%d", i)), amqp.Publishing{})
	}
	must(ch.Qos(2, 0, false), "qos")
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	must(err, "consume")
	d0, d1 := next(ds, "p0"), next(ds, "p1")
	eq([]string{string(d0.Body), string(d1.Body)}, []string{"p0", "p1"}, "first two")
	none(ds, 700*time.Millisecond, "prefetch 2 with nothing acked")
	must(d0.Ack(false), "ack")
	d2 := next(ds, "p2")
	eq(string(d2.Body), "p2", "one more after one ack")
	none(ds, 500*time.Millisecond, "still at the prefetch limit")
	must(d2.Ack(true), "ack multiple")
	d3, d4 := next(ds, "p3"), next(ds, "p4")
	eq([]string{string(d3.Body), string(d4.Body)}, []string{"p3", "p4"}, "the rest")
	must(d4.Ack(true), "ack")
}

func publisherConfirms() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	must(ch.Confirm(false), "confirm.select")
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 100))
	returns := ch.NotifyReturn(make(chan amqp.Return, 10))
	q := declareQueue(ch, name("q"), nil)
	for i := 0; i < 50; i++ {
		publish(ch, "", q, []byte(fmt.Sprintf("c%d", i)), amqp.Publishing{})
	}
	for i := 1; i <= 50; i++ {
		select {
		case c := <-confirms:
			eq([]interface{}{c.DeliveryTag, c.Ack}, []interface{}{uint64(i), true}, "confirm")
		case <-time.After(5 * time.Second):
			fail("confirm %d did not arrive", i)
		}
	}
	eq(messageCount(ch, q), 50, "confirmed messages queued")
	must(ch.Publish("amq.direct", name("nowhere"), true, false, amqp.Publishing{Body: []byte("r")}), "publish")
	select {
	case r := <-returns:
		eq([]interface{}{r.ReplyCode, r.ReplyText}, []interface{}{uint16(312), "NO_ROUTE"}, "return")
	case <-time.After(5 * time.Second):
		fail("no basic.return for an unroutable mandatory publish")
	}
	select {
	case c := <-confirms:
		eq([]interface{}{c.DeliveryTag, c.Ack}, []interface{}{uint64(51), true}, "returned message confirmed")
	case <-time.After(5 * time.Second):
		fail("returned message not confirmed")
	}
	full := declareQueue(ch, name("full"), amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})
	publish(ch, "", full, []byte("fits"), amqp.Publishing{})
	publish(ch, "", full, []byte("overflows"), amqp.Publishing{})
	for _, want := range []bool{true, false} {
		select {
		case c := <-confirms:
			eq(c.Ack, want, fmt.Sprintf("confirm %d of the full queue", c.DeliveryTag))
		case <-time.After(5 * time.Second):
			fail("no confirm for the full queue")
		}
	}
	eq(messageCount(ch, full), 1, "the full queue kept one")
}

func mandatoryReturn() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	returns := ch.NotifyReturn(make(chan amqp.Return, 10))
	key := name("unroutable")
	must(ch.Publish("amq.direct", key, true, false, amqp.Publishing{
		Body: []byte("come back"), MessageId: "ret-1", Headers: amqp.Table{"h": "v"},
	}), "publish")
	q := declareQueue(ch, name("q"), nil)
	must(ch.Publish("", q, true, false, amqp.Publishing{Body: []byte("routed")}), "publish")
	select {
	case r := <-returns:
		eq([]interface{}{r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey, string(r.Body), r.MessageId, r.Headers},
			[]interface{}{uint16(312), "NO_ROUTE", "amq.direct", key, "come back", "ret-1", amqp.Table{"h": "v"}}, "basic.return")
	case <-time.After(5 * time.Second):
		fail("no basic.return")
	}
	must(ch.Publish("amq.direct", key, false, false, amqp.Publishing{Body: []byte("dropped")}), "publish")
	eq(sentinelDrain(ch, q), []string{"routed"}, "routed mandatory message")
	select {
	case r := <-returns:
		fail("unexpected return %q", r.Body)
	case <-time.After(300 * time.Millisecond):
	}
}

func transactions() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q := declareQueue(ch, name("q"), nil)
	must(ch.Tx(), "tx.select")
	publish(ch, "", q, []byte("rolled-back"), amqp.Publishing{})
	eq(messageCount(ch, q), 0, "uncommitted publish invisible")
	must(ch.TxRollback(), "rollback")
	eq(messageCount(ch, q), 0, "after rollback")
	publish(ch, "", q, []byte("committed"), amqp.Publishing{})
	must(ch.TxCommit(), "commit")
	m := getOne(ch, q)
	eq(string(m.Body), "committed", "body")
	must(m.Ack(false), "ack")
	must(ch.TxRollback(), "rollback the ack")
	must(ch.Recover(true), "basic.recover")
	m = getOne(ch, q)
	eq([]interface{}{string(m.Body), m.Redelivered}, []interface{}{"committed", true}, "back after the rolled-back ack")
	must(m.Ack(false), "ack")
	must(ch.TxCommit(), "commit")
	_, ok, err := ch.Get(q, false)
	must(err, "get")
	check(!ok, "queue empty after the committed ack")
}

func digest(b []byte) string {
	return fmt.Sprintf("%d bytes sha256 %x", len(b), sha256.Sum256(b))
}

func bodies() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q := declareQueue(ch, name("q"), nil)
	const frameBody = 131072 - 8
	large := make([]byte, 10*1024*1024)
	for i := range large {
		large[i] = byte(i)
	}
	want := [][]byte{{}, []byte("x"), bytes.Repeat([]byte("y"), frameBody), bytes.Repeat([]byte("z"), frameBody+1), large}
	for _, b := range want {
		publish(ch, "", q, b, amqp.Publishing{})
	}
	ds, err := ch.Consume(q, "", true, false, false, false, nil)
	must(err, "consume")
	for i, b := range want {
		d := next(ds, fmt.Sprintf("body %d", i))
		eq(digest(d.Body), digest(b), fmt.Sprintf("body %d", i))
	}
}

func properties() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q := declareQueue(ch, name("q"), nil)
	ts := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	headers := amqp.Table{
		"string":    "hello ✓",
		"bytes":     []byte{0, 1, 0xfe, 0xff},
		"int8":      int8(-8),
		"int16":     int16(-1600),
		"int32":     int32(-123456),
		"int64":     int64(1<<40 + 7),
		"bool-true": true, "bool-false": false,
		"float":     float32(1.5),
		"double":    float64(3.25),
		"decimal":   amqp.Decimal{Scale: 3, Value: 12345},
		"timestamp": ts,
		"table":     amqp.Table{"nested": "yes", "n": int32(1), "deeper": amqp.Table{"x": "y"}},
		"array":     []interface{}{"a", int32(1), true, amqp.Table{"k": "v"}, []interface{}{"inner"}},
		"void":      nil,
	}
	sent := amqp.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", Headers: headers,
		DeliveryMode: 2, Priority: 5, CorrelationId: "corr-1", ReplyTo: "reply-queue",
		Expiration: "60000", MessageId: "msg-1", Timestamp: time.Unix(1700000000, 0),
		Type: "kind", UserId: "guest", AppId: "interop",
	}
	publish(ch, "", q, []byte("{}"), sent)
	m := getOne(ch, q)
	eq(string(m.Body), "{}", "body")
	got := []interface{}{m.ContentType, m.ContentEncoding, m.DeliveryMode, m.Priority, m.CorrelationId,
		m.ReplyTo, m.Expiration, m.MessageId, m.Timestamp.Unix(), m.Type, m.UserId, m.AppId}
	exp := []interface{}{sent.ContentType, sent.ContentEncoding, sent.DeliveryMode, sent.Priority, sent.CorrelationId,
		sent.ReplyTo, sent.Expiration, sent.MessageId, sent.Timestamp.Unix(), sent.Type, sent.UserId, sent.AppId}
	eq(got, exp, "properties")
	keys := func(t amqp.Table) []string {
		ks := []string{}
		for k := range t {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	}
	eq(keys(m.Headers), keys(headers), "header names")
	for k, v := range headers {
		g := m.Headers[k]
		if tv, ok := v.(time.Time); ok {
			gt, ok := g.(time.Time)
			check(ok && gt.Equal(tv), "header timestamp: expected %v, got %#v", tv, g)
			continue
		}
		eq(g, v, "header "+k)
	}
	publish(ch, "", q, []byte("bare"), amqp.Publishing{})
	m = getOne(ch, q)
	eq([]interface{}{len(m.Headers), m.ContentType, m.DeliveryMode}, []interface{}{0, "", uint8(0)}, "empty properties")
}

func channelErrors() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	missing := name("missing")
	_, err := ch.QueueDeclarePassive(missing, false, false, false, false, nil)
	closedWith(err, 404, notFoundQueue(missing), "passive declare of a missing queue")
	_, err = ch.QueueDeclare(name("after"), false, false, true, false, nil)
	check(err != nil, "the channel is closed after a 404")
	ch = channel(conn)
	q, err := ch.QueueDeclare(name("q"), false, true, false, false, nil)
	must(err, "declare")
	_, err = ch.QueueDeclare(q.Name, true, true, false, false, nil)
	closedWith(err, 406, fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in vhost '/': received 'true' but current is 'false'", q.Name), "redeclare with another durable flag")
	ch = channel(conn)
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	nox := name("no-exchange")
	publish(ch, nox, "k", []byte("lost"), amqp.Publishing{})
	select {
	case e := <-closes:
		check(e != nil, "channel closed")
		eq([]interface{}{e.Code, e.Reason}, []interface{}{404, notFoundExchange(nox)}, "publish to a missing exchange")
	case <-time.After(5 * time.Second):
		fail("channel not closed after publishing to a missing exchange")
	}
	ch = channel(conn)
	publish(ch, "", q.Name, []byte("still works"), amqp.Publishing{})
	eq(string(getOne(ch, q.Name).Body), "still works", "a new channel works after the errors")
	check(!conn.IsClosed(), "connection survives channel errors")
	_, err = ch.QueueDelete(q.Name, false, false, false)
	must(err, "delete")
}

func consumerCancel() {
	conn := dial()
	defer conn.Close()
	ch := channel(conn)
	q, err := ch.QueueDeclare(name("q"), false, false, false, false, nil)
	must(err, "declare")
	cancels := ch.NotifyCancel(make(chan string, 1))
	ds, err := ch.Consume(q.Name, "c1", true, false, false, false, nil)
	must(err, "consume")
	publish(ch, "", q.Name, []byte("before"), amqp.Publishing{})
	eq(string(next(ds, "before").Body), "before", "delivery")
	other := channel(conn)
	_, err = other.QueueDelete(q.Name, false, false, false)
	must(err, "delete")
	select {
	case tag := <-cancels:
		eq(tag, "c1", "cancelled consumer tag")
	case <-time.After(5 * time.Second):
		fail("no basic.cancel from the broker")
	}
	_, open := <-ds
	check(!open, "delivery channel closed after the cancel")
	q2 := declareQueue(ch, name("q2"), nil)
	ds2, err := ch.Consume(q2, "c2", true, false, false, false, nil)
	must(err, "consume")
	must(ch.Cancel("c2", false), "basic.cancel")
	publish(ch, "", q2, []byte("after-cancel"), amqp.Publishing{})
	for d := range ds2 {
		fail("delivery after basic.cancel: %q", d.Body)
	}
	time.Sleep(200 * time.Millisecond)
	eq(messageCount(ch, q2), 1, "message stays queued")
}

// requestRestart asks the harness to restart the broker on the same port and waits for it.
func requestRestart() {
	fmt.Println("WARREN-INTEROP:restart-broker")
	var answer string
	_, err := fmt.Scanln(&answer)
	check(err == nil && answer == "restarted", "the harness could not restart the broker: %q %v", answer, err)
}

// recovery: amqp091-go has no automatic recovery; the application redials on NotifyClose.
func recovery() {
	cfg := amqp.Config{Properties: amqp.Table{"connection_name": name("recovery")}}
	conn, err := amqp.DialConfig(url, cfg)
	must(err, "dial")
	closes := conn.NotifyClose(make(chan *amqp.Error, 1))
	ch := channel(conn)
	q := name("q")
	_, err = ch.QueueDeclare(q, false, true, false, false, nil)
	must(err, "declare")
	publish(ch, "", q, []byte("before"), amqp.Publishing{})
	m := getOne(ch, q)
	eq(string(m.Body), "before", "before the restart")
	must(m.Ack(false), "ack")
	requestRestart()
	var closed *amqp.Error
	select {
	case closed = <-closes:
		check(closed != nil, "connection closed with an error")
		eq([]interface{}{closed.Code, closed.Server}, []interface{}{320, true}, "connection.close")
	case <-time.After(10 * time.Second):
		fail("the connection survived a broker restart")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err = amqp.DialConfig(url, cfg)
		if err == nil {
			break
		}
		check(time.Now().Before(deadline), "reconnected within 20s: %v", err)
		time.Sleep(200 * time.Millisecond)
	}
	defer conn.Close()
	ch = channel(conn)
	_, err = ch.QueueDeclare(q, false, true, false, false, nil)
	must(err, "redeclare")
	publish(ch, "", q, []byte("after"), amqp.Publishing{})
	eq(string(getOne(ch, q).Body), "after", "after the restart")
	_, err = ch.QueueDelete(q, false, false, false)
	must(err, "delete")
	// Checked last, so that a wrong text does not hide whether reconnecting works.
	eq(closed.Reason, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
		"connection.close text at the restart")
}

var scenarios = []struct {
	name string
	run  func()
}{
	{"connect-heartbeat", connectHeartbeat},
	{"exchanges", exchanges},
	{"topic-routing", topicRouting},
	{"headers-routing", headersRouting},
	{"ack-nack-reject", ackNackReject},
	{"basic-get", basicGet},
	{"prefetch", prefetch},
	{"publisher-confirms", publisherConfirms},
	{"mandatory-return", mandatoryReturn},
	{"transactions", transactions},
	{"bodies", bodies},
	{"properties", properties},
	{"channel-errors", channelErrors},
	{"consumer-cancel", consumerCancel},
	{"recovery", recovery},
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: interop-go --list | SCENARIO")
		os.Exit(2)
	}
	if os.Args[1] == "--list" {
		for _, s := range scenarios {
			fmt.Println(s.name)
		}
		return
	}
	for _, s := range scenarios {
		if s.name != os.Args[1] {
			continue
		}
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintf(os.Stderr, "FAILED: %v\n", r)
				os.Exit(1)
			}
		}()
		s.run()
		fmt.Println("ok")
		return
	}
	fmt.Fprintf(os.Stderr, "unknown scenario %q; --list shows them\n", os.Args[1])
	os.Exit(2)
}
