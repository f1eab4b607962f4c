// kafkajs over SASL_SSL with SCRAM-SHA-512: produces `count` records to `topic` and reads
// them back with a group consumer, then prints them as a JSON array.
// Usage: node secure.js <broker> <ca.pem> <user> <password> <topic> <group> <count>
const fs = require("fs");
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [broker, ca, username, password, topic, groupId, count] = process.argv.slice(2);
  const kafka = new Kafka({
    clientId: "seedlog-e2e",
    brokers: [broker],
    logLevel: logLevel.WARN,
    ssl: { ca: [fs.readFileSync(ca, "utf-8")] },
    sasl: { mechanism: "scram-sha-512", username, password },
  });
  const producer = kafka.producer();
  await producer.connect();
  const values = [];
  for (let i = 0; i < Number(count); i++) values.push(`js-${i}`);
  await producer.send({ topic, acks: -1, messages: values.map((value) => ({ value })) });
  await producer.disconnect();
  const consumer = kafka.consumer({ groupId });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`saw ${seen.length} of ${count}`)), 30000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.push(message.value.toString());
        if (seen.length >= Number(count)) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  console.log(JSON.stringify(seen));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
