// A Java agent: java.net.http.HttpClient with the default proxy selector (https.proxyHost and
// https.proxyPort from JAVA_TOOL_OPTIONS) and the default SSL context (javax.net.ssl.trustStore).
// Prints the protocol and body; exits 1 on an HTTP error or a refused CONNECT.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Agent {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newHttpClient();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0]))
            .header("Authorization", "Bearer credproxy")
            .build();
        try {
            HttpResponse<String> r = client.send(req, HttpResponse.BodyHandlers.ofString());
            if (r.statusCode() >= 400) {
                System.err.println("HTTP " + r.statusCode() + ": " + r.body());
                System.exit(1);
            }
            System.out.print(r.version() + " " + r.body());
        } catch (java.io.IOException e) {
            System.err.println("refused: " + e);
            System.exit(1);
        }
    }
}
