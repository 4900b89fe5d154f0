// A CQL client small enough to compile at first start (scripts/services.sh
// does, with the DataStax 3.x driver that cassandra-all itself ships):
//
//   java -cp "<check>:<cassandra lib>/*" CqlCheck 127.0.0.1 9042 ["CQL" ...]
//
// Connects, runs `SELECT release_version FROM system.local` (or each
// statement given), prints the first row of each result and exits 0; exits
// 1 with the error on failure.
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.ResultSet;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;

public final class CqlCheck {
    public static void main(String[] args) {
        String host = args.length > 0 ? args[0] : "127.0.0.1";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 9042;
        String[] statements = args.length > 2
                ? java.util.Arrays.copyOfRange(args, 2, args.length)
                : new String[] {"SELECT release_version FROM system.local"};
        try (Cluster cluster = Cluster.builder()
                .addContactPoint(host)
                .withPort(port)
                .withoutJMXReporting()
                .withoutMetrics()
                .build();
             Session session = cluster.connect()) {
            for (String cql : statements) {
                ResultSet rs = session.execute(cql);
                Row row = rs.one();
                System.out.println(cql + " -> " + (row == null ? "(no rows)" : row.toString()));
            }
        } catch (RuntimeException e) {
            System.err.println("CQL check failed: " + e);
            System.exit(1);
        }
    }
}
