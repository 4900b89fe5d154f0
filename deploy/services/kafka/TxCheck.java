// Checks that the running Kafka does transactions, with the fetched
// kafka-clients jar, in Java's single-file source mode:
//
//   scripts/services.sh kafka-run deploy/services/kafka/TxCheck.java 127.0.0.1:<port>
//
// On a fresh topic: a transaction of 10 records aborted, one of 5 committed;
// a read_committed consumer must see exactly the 5, a read_uncommitted one
// all 15; a second producer with the same transactional.id must fence the
// first (its send fails with InvalidProducerEpochException on Kafka 4, or
// ProducerFencedException) and its record stay invisible. Exits 0 when all
// hold, 1 otherwise.
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.errors.InvalidProducerEpochException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class TxCheck {
    public static void main(String[] args) throws Exception {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:9092";
        String topic = "txcheck-" + UUID.randomUUID();
        String txId = "txcheck-" + UUID.randomUUID();
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1))).all().get();
        }
        KafkaProducer<String, String> first = producer(bootstrap, txId);
        first.initTransactions();
        first.beginTransaction();
        for (int i = 0; i < 10; i++) first.send(new ProducerRecord<>(topic, "k" + i, "aborted-" + i));
        first.flush(); // so that the aborted records reach the log (abort drops unsent ones)
        first.abortTransaction();
        first.beginTransaction();
        for (int i = 0; i < 5; i++) first.send(new ProducerRecord<>(topic, "k" + i, "committed-" + i));
        first.commitTransaction();

        int committed = count(bootstrap, topic, "read_committed", 5);
        int uncommitted = count(bootstrap, topic, "read_uncommitted", 15);
        System.out.println("read_committed saw " + committed + " (want 5), read_uncommitted saw " + uncommitted + " (want 15)");

        boolean fenced = false;
        try (KafkaProducer<String, String> second = producer(bootstrap, txId)) {
            second.initTransactions();
            first.beginTransaction();
            first.send(new ProducerRecord<>(topic, "k", "zombie"));
            first.commitTransaction();
        } catch (org.apache.kafka.common.KafkaException e) {
            // Kafka 4 (transactions v2, KIP-890) reports the zombie's send as
            // InvalidProducerEpochException; older ones as ProducerFencedException.
            for (Throwable t = e; t != null; t = t.getCause()) {
                if (t instanceof ProducerFencedException || t instanceof InvalidProducerEpochException) fenced = true;
            }
            System.out.println("the first producer's commit after the second's initTransactions: " + e);
        } finally {
            first.close(Duration.ofSeconds(5));
        }
        int after = count(bootstrap, topic, "read_committed", 5);
        System.out.println("second producer with the same transactional.id fenced the first: " + fenced
                + "; read_committed then saw " + after + " (want 5)");
        boolean ok = committed == 5 && uncommitted == 15 && fenced && after == 5;
        System.out.println(ok ? "TRANSACTIONS OK" : "TRANSACTIONS FAILED");
        System.exit(ok ? 0 : 1);
    }

    static KafkaProducer<String, String> producer(String bootstrap, String txId) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("transactional.id", txId);
        p.put("enable.idempotence", "true");
        return new KafkaProducer<>(p, new StringSerializer(), new StringSerializer());
    }

    static int count(String bootstrap, String topic, String isolation, int want) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("group.id", "txcheck-" + UUID.randomUUID());
        p.put("auto.offset.reset", "earliest");
        p.put("isolation.level", isolation);
        int n = 0;
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(p, new StringDeserializer(), new StringDeserializer())) {
            c.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 15_000;
            // Read for a while past `want` too, to catch records that should not be there.
            long quietUntil = Long.MAX_VALUE;
            while (System.currentTimeMillis() < Math.min(deadline, quietUntil)) {
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) n++;
                if (n >= want && quietUntil == Long.MAX_VALUE) quietUntil = System.currentTimeMillis() + 2_000;
            }
        }
        return n;
    }
}
