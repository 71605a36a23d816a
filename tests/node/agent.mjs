// A Node 20 agent: fetch through HTTPS_PROXY with undici's EnvHttpProxyAgent, trusting the CA
// in NODE_EXTRA_CA_CERTS. Prints the body; exits 1 on an HTTP error or a refused CONNECT.
import { EnvHttpProxyAgent, fetch } from 'undici';

const url = process.argv[2];
try {
  const r = await fetch(url, {
    dispatcher: new EnvHttpProxyAgent(),
    headers: { authorization: 'Bearer credproxy' },
  });
  const body = await r.text();
  if (!r.ok) {
    console.error(`HTTP ${r.status}: ${body}`);
    process.exit(1);
  }
  process.stdout.write(body);
} catch (e) {
  console.error(`refused: ${e.cause?.message ?? e.message}`);
  process.exit(1);
}
