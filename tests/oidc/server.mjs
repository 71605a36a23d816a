// A certified OAuth 2.0 server (oidc-provider) on loopback for credproxy's tests.
//
//   node server.mjs --port P --keys FILE [--ttl SECONDS]
//
// Client credentials with resource indicators (JWT access tokens signed ES256 for
// https://api.test/, opaque ones for https://opaque.test/), introspection, revocation, and an
// RFC 8693 token-exchange grant registered with registerGrantType (oidc-provider has none built
// in). The signing keys are written to FILE on first start and reused, so a restarted server's
// tokens verify against the same JWKS. Clients authenticate with client_secret_basic,
// client_secret_post (secrets holding ':', '+' and '%', which RFC 6749 §2.3.1 form-encodes) and
// private_key_jwt (RFC 7523; the client's P-256 key is written beside FILE as FILE.client.pem).
// The client `credproxy-broad` is granted every scope it is registered for, whatever it asks for
// (scope creep, for credproxy's scope-excess check). Prints "listening" when ready.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: { port: { type: 'string' }, keys: { type: 'string' }, ttl: { type: 'string', default: '4' } },
});
const port = Number(args.port);
const ttl = Number(args.ttl);
if (!port || !args.keys) {
  console.error('usage: node server.mjs --port P --keys FILE [--ttl SECONDS]');
  process.exit(2);
}

function loadKeys(file) {
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const keys = { keys: [{ ...ec, kid: 'ec-1', use: 'sig', alg: 'ES256' }, { ...rsa, kid: 'rsa-1', use: 'sig', alg: 'RS256' }] };
  fs.writeFileSync(file, JSON.stringify(keys), { mode: 0o600 });
  return keys;
}

// The private_key_jwt client's key: PKCS#8 PEM for credproxy, the public JWK for the server.
function clientKey(file) {
  const pem = `${file}.client.pem`;
  if (!fs.existsSync(pem)) {
    const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    fs.writeFileSync(pem, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  }
  const pub = crypto.createPublicKey(fs.readFileSync(pem)).export({ format: 'jwk' });
  return { ...pub, kid: 'client-1', use: 'sig', alg: 'ES256' };
}

// Secrets with the characters RFC 6749 §2.3.1's form-encoding changes.
export const CLIENT_SECRET = 'credproxy:s3cret+with%chars';

// A client this server grants every scope it is registered for, whatever it asks for: the
// scope creep credproxy reports (a policy some authorization servers have for service clients).
const BROAD_CLIENT = 'credproxy-broad';

// The stand-in for a projected ServiceAccount token that token exchange accepts.
export const SUBJECT_TOKEN = 'pod-1-service-account-token';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

function resourceServerInfo(indicator) {
  return {
    scope: 'api:read api:write admin',
    audience: indicator,
    accessTokenTTL: ttl,
    accessTokenFormat: indicator.startsWith('https://opaque.') ? 'opaque' : 'jwt',
    jwt: { sign: { alg: 'ES256' } },
  };
}

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  jwks: loadKeys(args.keys),
  scopes: ['api:read', 'api:write', 'admin'],
  clients: [
    {
      client_id: 'credproxy',
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials', TOKEN_EXCHANGE],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'api:read',
    },
    {
      client_id: 'credproxy-post',
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: 'api:read',
    },
    {
      client_id: 'credproxy-pkjwt',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [clientKey(args.keys)] },
      scope: 'api:read',
    },
    // Registered for more than it asks for, and granted all of it (the middleware below).
    {
      client_id: BROAD_CLIENT,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'api:read api:write admin',
    },
    // The upstream API checks opaque tokens with introspection.
    { client_id: 'upstream', client_secret: 'upstream-secret', grant_types: [], redirect_uris: [], response_types: [] },
  ],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => resourceServerInfo(indicator),
    },
  },
  // Exchanged tokens say whose token was exchanged.
  extraTokenClaims: (ctx) =>
    ctx?.oidc?.params?.grant_type === TOKEN_EXCHANGE ? { exchanged_subject: ctx.oidc.params.subject_token } : undefined,
});

// Before oidc-provider reads the token request: the broad client's `scope` is widened to its
// registration. oidc-provider then takes the parsed body (ctx.request.body) as the request and
// runs its own client_credentials grant on it. Only that client's requests (known by their
// Basic credentials) are touched.
provider.use(async (ctx, next) => {
  const auth = ctx.get('authorization');
  const basic = auth.startsWith('Basic ') ? Buffer.from(auth.slice(6), 'base64').toString() : '';
  if (ctx.method === 'POST' && ctx.path === '/token' && decodeURIComponent(basic.split(':')[0]) === BROAD_CLIENT) {
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    const body = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString()));
    body.scope = 'api:read api:write admin';
    ctx.request.body = body;
  }
  await next();
});

provider.registerGrantType(
  TOKEN_EXCHANGE,
  async (ctx) => {
    const p = ctx.oidc.params;
    if (p.subject_token !== SUBJECT_TOKEN) throw new errors.InvalidGrant('subject token not accepted');
    if (p.subject_token_type !== 'urn:ietf:params:oauth:token-type:jwt') {
      throw new errors.InvalidRequest('unsupported subject_token_type');
    }
    if (p.requested_token_type && p.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('unsupported requested_token_type');
    }
    const indicator = p.resource || p.audience;
    if (!indicator) throw new errors.InvalidTarget('audience or resource is required');
    const token = new provider.ClientCredentials({ client: ctx.oidc.client, scope: 'api:read' });
    token.resourceServer = new provider.ResourceServer(indicator, resourceServerInfo(indicator));
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
    };
  },
  ['audience', 'resource', 'scope', 'requested_token_type', 'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type'],
);

http.createServer(provider.callback()).listen(port, '127.0.0.1', () => console.log('listening'));
