//! Policies and operator policies: the highest-priority matching policy applies, numeric
//! limits take the smallest of argument, policy and operator policy, a queue's own
//! dead-letter arguments win over the policy's, changes reach existing queues and exchanges
//! at once, and a definition with an unknown key is refused naming it. On Warren policies
//! are set through the node's definitions path (`MetaCommand::SetPolicy`); against RabbitMQ
//! with `rabbitmqctl set_policy`.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use warren_broker::meta::{ApplyTo, MetaCommand, PolicyDef};
use warren_tests::{eventually, unique, within, TestBroker};

use super::dead_lettering::{count, deaths, declare, publish_props, wait_get};
use super::exchanges::{confirm_channel, connect, s, table};

/// Sets a policy (or operator policy); the error is the broker's refusal text.
pub(crate) async fn set_policy(
    broker: &TestBroker,
    name: &str,
    pattern: &str,
    apply_to: ApplyTo,
    priority: i64,
    definition: serde_json::Value,
    operator: bool,
) -> Result<(), String> {
    let Some(shared) = broker.shared() else {
        let out = std::process::Command::new("rabbitmqctl")
            .arg(if operator {
                "set_operator_policy"
            } else {
                "set_policy"
            })
            .args(["--priority", &priority.to_string()])
            .args(["--apply-to", apply_to.name()])
            .args([name, pattern, &definition.to_string()])
            .output()
            .expect("run rabbitmqctl");
        return if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        };
    };
    let def = PolicyDef {
        vhost: "/".into(),
        name: name.into(),
        pattern: pattern.into(),
        apply_to,
        priority,
        definition,
    };
    shared
        .execute(if operator {
            MetaCommand::SetOperatorPolicy(def)
        } else {
            MetaCommand::SetPolicy(def)
        })
        .await
        .map_err(|e| e.text)
}

pub(crate) async fn clear_policy(broker: &TestBroker, name: &str, operator: bool) {
    let Some(shared) = broker.shared() else {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg(if operator {
                "clear_operator_policy"
            } else {
                "clear_policy"
            })
            .arg(name)
            .output();
        return;
    };
    let vhost = "/".to_string();
    let name = name.to_string();
    shared
        .execute(if operator {
            MetaCommand::ClearOperatorPolicy { vhost, name }
        } else {
            MetaCommand::ClearPolicy { vhost, name }
        })
        .await
        .expect("clear the policy");
}

/// A policy pattern matching exactly the names that start with `prefix`.
fn prefixed(prefix: &str) -> String {
    format!("^{}", regex_escape(prefix))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_gives_matching_queues_a_ttl_and_a_dead_letter_exchange() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let prefix = unique("pol-ttl");
    let (q, dlq) = (format!("{prefix}.q"), unique("pol-ttl-dst"));
    let policy = unique("ttl-policy");
    set_policy(
        &broker,
        &policy,
        &prefixed(&format!("{prefix}.")),
        ApplyTo::Queues,
        0,
        serde_json::json!({"message-ttl": 100, "dead-letter-exchange": "", "dead-letter-routing-key": dlq}),
        false,
    )
    .await
    .expect("set the policy");
    declare(&ch, &dlq, FieldTable::default()).await;
    declare(&ch, &q, FieldTable::default()).await;
    assert!(publish_props(&ch, "", &q, "m", BasicProperties::default()).await);
    let dead = wait_get(&ch, &dlq).await;
    let d = deaths(&dead);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].reason.as_str(), d[0].queue.as_str()),
        ("expired", q.as_str())
    );
    clear_policy(&broker, &policy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_applies_to_an_existing_queue_at_once() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("pol-live");
    declare(&ch, &q, FieldTable::default()).await;
    for i in 0..5 {
        assert!(publish_props(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    let policy = unique("live-policy");
    set_policy(
        &broker,
        &policy,
        &format!("{}$", prefixed(&q)),
        ApplyTo::All,
        0,
        serde_json::json!({"max-length": 2}),
        false,
    )
    .await
    .expect("set the policy");
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&ch, &q).await == 2
        })
        .await,
        "the new limit dropped the oldest messages at once"
    );
    clear_policy(&broker, &policy, false).await;
    // RabbitMQ applies policy changes asynchronously: wait until the limit is gone.
    assert!(
        eventually(Duration::from_secs(10), || async {
            assert!(publish_props(&ch, "", &q, "more", BasicProperties::default()).await);
            count(&ch, &q).await > 3
        })
        .await,
        "clearing the policy removed the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn highest_priority_policy_applies() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("pol-prio");
    let (low, high) = (unique("low"), unique("high"));
    let pattern = format!("{}$", prefixed(&q));
    set_policy(
        &broker,
        &low,
        &pattern,
        ApplyTo::Queues,
        1,
        serde_json::json!({"max-length": 1}),
        false,
    )
    .await
    .expect("low");
    set_policy(
        &broker,
        &high,
        &pattern,
        ApplyTo::All,
        9,
        serde_json::json!({"max-length": 3}),
        false,
    )
    .await
    .expect("high");
    declare(&ch, &q, FieldTable::default()).await;
    for i in 0..5 {
        assert!(publish_props(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    assert_eq!(count(&ch, &q).await, 3, "the priority 9 policy applies");
    clear_policy(&broker, &low, false).await;
    clear_policy(&broker, &high, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_wins_for_dead_lettering_and_the_smaller_limit_wins() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("pol-args");
    let (pol_dlq, arg_dlq) = (unique("pol-dlq"), unique("arg-dlq"));
    declare(&ch, &pol_dlq, FieldTable::default()).await;
    declare(&ch, &arg_dlq, FieldTable::default()).await;
    let policy = unique("args-policy");
    set_policy(
        &broker,
        &policy,
        &format!("{}$", prefixed(&q)),
        ApplyTo::Queues,
        0,
        serde_json::json!({"max-length": 3, "dead-letter-exchange": "", "dead-letter-routing-key": pol_dlq}),
        false,
    )
    .await
    .expect("set the policy");
    declare(
        &ch,
        &q,
        table(&[
            ("x-max-length", AMQPValue::LongInt(5)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&arg_dlq)),
        ]),
    )
    .await;
    for i in 0..4 {
        assert!(publish_props(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    assert_eq!(count(&ch, &q).await, 3, "min(policy 3, argument 5)");
    let dead = wait_get(&ch, &arg_dlq).await;
    assert_eq!(super::dead_lettering::body(&dead), "m0");
    assert_eq!(
        count(&ch, &pol_dlq).await,
        0,
        "the argument's routing key won"
    );
    clear_policy(&broker, &policy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_policy_caps_the_policy_value() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("pol-op");
    let pattern = format!("{}$", prefixed(&q));
    let (policy, op) = (unique("user-policy"), unique("op-policy"));
    set_policy(
        &broker,
        &policy,
        &pattern,
        ApplyTo::Queues,
        0,
        serde_json::json!({"max-length": 5}),
        false,
    )
    .await
    .expect("policy");
    set_policy(
        &broker,
        &op,
        &pattern,
        ApplyTo::Queues,
        0,
        serde_json::json!({"max-length": 2}),
        true,
    )
    .await
    .expect("operator policy");
    declare(&ch, &q, FieldTable::default()).await;
    for i in 0..4 {
        assert!(publish_props(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    assert_eq!(
        count(&ch, &q).await,
        2,
        "the operator policy's lower limit wins"
    );
    clear_policy(&broker, &policy, false).await;
    clear_policy(&broker, &op, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_with_an_unknown_or_invalid_key_is_refused_naming_it() {
    let broker = TestBroker::start().await;
    let name = unique("bad-policy");
    let pattern = format!("^{}$", unique("nothing"));
    let err = set_policy(
        &broker,
        &name,
        &pattern,
        ApplyTo::All,
        0,
        serde_json::json!({"foo": "bar", "message-ttl": 5}),
        false,
    )
    .await
    .expect_err("unknown key refused");
    assert!(
        err.contains("[{<<\"foo\">>,<<\"bar\">>}] are not recognised policy settings"),
        "{err}"
    );
    let err = set_policy(
        &broker,
        &name,
        &pattern,
        ApplyTo::All,
        0,
        serde_json::json!({"message-ttl": -5}),
        false,
    )
    .await
    .expect_err("negative TTL refused");
    assert!(err.contains("-5 is not a valid message TTL"), "{err}");
    let err = set_policy(
        &broker,
        &name,
        &pattern,
        ApplyTo::All,
        0,
        serde_json::json!({"overflow": "drop-head"}),
        true,
    )
    .await
    .expect_err("operator policies take only limits");
    assert!(
        err.contains("[{<<\"overflow\">>,<<\"drop-head\">>}] are not recognised policy settings"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_policy_applies_to_an_existing_exchange() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (x, ae, aeq) = (unique("pol-x"), unique("pol-ae"), unique("pol-aeq"));
    for (name, kind) in [(&x, ExchangeKind::Direct), (&ae, ExchangeKind::Fanout)] {
        within(
            10,
            "exchange.declare",
            ch.exchange_declare(
                name.as_str().into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare exchange");
    }
    declare(&ch, &aeq, FieldTable::default()).await;
    within(
        10,
        "queue.bind",
        ch.queue_bind(
            aeq.as_str().into(),
            ae.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    let policy = unique("ae-policy");
    set_policy(
        &broker,
        &policy,
        &format!("{}$", prefixed(&x)),
        ApplyTo::Exchanges,
        0,
        serde_json::json!({"alternate-exchange": ae}),
        false,
    )
    .await
    .expect("set the policy");
    assert!(
        eventually(Duration::from_secs(10), || async {
            assert!(publish_props(&ch, &x, "nowhere", "lost?", BasicProperties::default()).await);
            count(&ch, &aeq).await > 0
        })
        .await,
        "the unroutable message went to the alternate exchange"
    );
    clear_policy(&broker, &policy, false).await;
    for name in [&x, &ae] {
        let _ = ch
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
