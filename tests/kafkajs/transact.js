// A transactional kafkajs producer: `rounds` transactions of `per` records each to
// partitions 0 and 1 of `topic`, committing the even rounds and aborting the odd ones.
// Prints the values it committed, as a JSON array. Usage:
// node transact.js <broker> <topic> <rounds> <per>
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [broker, topic, rounds, per] = process.argv.slice(2);
  const kafka = new Kafka({ clientId: "seedlog-e2e", brokers: [broker], logLevel: logLevel.WARN });
  const producer = kafka.producer({
    transactionalId: "kafkajs-txn",
    idempotent: true,
    maxInFlightRequests: 1,
  });
  await producer.connect();
  const committed = [];
  for (let round = 0; round < Number(rounds); round++) {
    const txn = await producer.transaction();
    const values = [];
    for (let i = 0; i < Number(per); i++) {
      values.push(`r${round}-${i}`);
    }
    await txn.send({
      topic,
      messages: values.map((value, i) => ({ value, partition: i % 2 })),
    });
    if (round % 2 === 0) {
      await txn.commit();
      committed.push(...values);
    } else {
      await txn.abort();
    }
  }
  await producer.disconnect();
  console.log(JSON.stringify(committed));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
