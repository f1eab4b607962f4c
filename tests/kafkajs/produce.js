// An idempotent kafkajs producer: sends `count` numbered records to partition 0 of
// `topic` in batches of `batch`, and prints the offset each batch was acknowledged at,
// one JSON array per line. Usage: node produce.js <broker> <topic> <count> <batch>
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [broker, topic, count, batch] = process.argv.slice(2);
  const kafka = new Kafka({ clientId: "seedlog-e2e", brokers: [broker], logLevel: logLevel.WARN });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const offsets = [];
  for (let sent = 0; sent < Number(count); sent += Number(batch)) {
    const messages = [];
    for (let i = sent; i < Math.min(sent + Number(batch), Number(count)); i++) {
      messages.push({ key: "k", value: "m" + String(i).padStart(6, "0"), partition: 0 });
    }
    const [meta] = await producer.send({ topic, acks: -1, messages });
    offsets.push(Number(meta.baseOffset));
  }
  await producer.disconnect();
  console.log(JSON.stringify(offsets));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
