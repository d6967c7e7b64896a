//! A RabbitMQ consumer for the AMQP tests (the broker on 127.0.0.1:5672, guest/guest).

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub const BROKER: &str = "127.0.0.1:5672";

/// A queue of our own bound to `exchange` with `siprec.#`.
pub async fn consumer(exchange: &str) -> (Connection, Channel, String) {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let conn = Connection::connect(&format!("amqp://guest:guest@{BROKER}/%2f"), props)
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange,
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().to_string();
    ch.queue_bind(
        &name,
        exchange,
        "siprec.#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (conn, ch, name)
}

/// Messages from `queue` until one of type `until` (or the timeout): (routing key, JSON).
pub async fn collect(
    ch: &Channel,
    queue: &str,
    until: &str,
    timeout: Duration,
) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let got = ch
            .basic_get(queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        match got {
            Some(m) => {
                let v: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
                assert_eq!(
                    *m.delivery.properties.delivery_mode(),
                    Some(2),
                    "persistent"
                );
                let key = m.delivery.routing_key.to_string();
                let done = v["type"] == until;
                out.push((key, v));
                if done {
                    break;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    out
}
