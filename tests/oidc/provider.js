// A real OpenID provider for natter's integration tests, started by
// tests/src/oidc_provider.rs: the npm package oauth2-mock-server (discovery,
// JWKS, RS256 ID tokens, the authorization code flow, PKCE, nonce), behind a
// thin wrapper that checks what Google checks and the package does not.
//
//   node provider.js --client-id ID --client-secret SECRET
//   (or OIDC_CLIENT_ID / OIDC_CLIENT_SECRET in the environment)
//
// Listens on 127.0.0.1 on a free port, with the issuer exactly
// http://127.0.0.1:PORT, and prints `listening http://127.0.0.1:PORT` once
// ready. Exits when its stdin, if a pipe, closes (the test process died).
//
// The package by itself: GET /authorize approves at once and redirects to any
// redirect_uri with a fresh `code` and the `state`, keeping `nonce` and
// `code_challenge` for that code. POST /token accepts ANY code, any number of
// times, with no client authentication and no redirect_uri check; it checks
// PKCE only when the request has a code_verifier (a code issued with a
// challenge is redeemed without one), answering 400 invalid_request when it
// does not match. Its ID token is iss, sub "johndoe", aud (the client_id of
// Basic auth or the form), iat, exp (+1 h), nbf and the code's nonce.
//
// This wrapper adds, as Google does: a known client_id and a redirect_uri at
// /authorize; at /token client authentication (client_secret_basic or
// client_secret_post, one of them), codes that are single-use, bound to their
// client, expire after 10 minutes and are refused otherwise (400
// invalid_grant), the code_verifier matching the code_challenge (a challenge
// needs a verifier), the redirect_uri of /authorize; the user's claims in the
// ID token (sub, email, email_verified, name, azp) and at /userinfo; a
// Google-like discovery document. And test controls under /__test/.

import http from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import { fstatSync } from 'node:fs';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const flag = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const clientId = flag('--client-id') ?? process.env.OIDC_CLIENT_ID;
const clientSecret = flag('--client-secret') ?? process.env.OIDC_CLIENT_SECRET;
if (!clientId || !clientSecret) {
  console.error('usage: node provider.js --client-id ID --client-secret SECRET');
  process.exit(2);
}

const CODE_TTL_MS = 10 * 60 * 1000;

// Whom the next /authorize signs in (POST /__test/user changes it).
let user = { sub: '100000000000000000001', email: 'alice@example.com', name: 'Alice Example', email_verified: true };
// What to change in the next ID token only (POST /__test/tamper).
let tamper = null;
// Codes the package issued, until redeemed: code -> what /authorize was asked.
const grants = new Map();
// Access tokens issued -> the user, for /userinfo.
const accessTokens = new Map();

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

// A code was issued: remember its request and the user who approved.
service.on('beforeAuthorizeRedirect', ({ url }, req) => {
  const code = url.searchParams.get('code');
  if (code === null) return; // unsupported response_type: the package redirects with an error
  const q = req.query;
  grants.set(code, {
    clientId: q.client_id,
    redirectUri: q.redirect_uri,
    scope: q.scope,
    challenge: q.code_challenge,
    method: q.code_challenge_method ?? 'plain',
    user: { ...user },
    issuedAt: Date.now(),
  });
});

// Claims: the package set iss, iat, exp, nbf, sub, and for the ID token aud
// and the code's nonce; the access token is the one without `aud`.
service.on('beforeTokenSigning', ({ payload }, req) => {
  const grant = req.natterGrant;
  payload.sub = grant.user.sub;
  if (!('aud' in payload)) {
    payload.scope = grant.scope;
    return;
  }
  delete payload.nbf; // Google's ID tokens have none
  const { email, email_verified, name } = grant.user;
  Object.assign(payload, { aud: clientId, azp: clientId, email, email_verified, name });
  if (tamper) {
    if (tamper.aud != null) Object.assign(payload, { aud: tamper.aud, azp: tamper.aud });
    if (tamper.expired) Object.assign(payload, { iat: payload.iat - 7200, exp: payload.iat - 3600 });
    if (tamper.nonce != null) payload.nonce = tamper.nonce;
    if (tamper.email_verified != null) payload.email_verified = tamper.email_verified;
    tamper = null;
  }
});

// Google's answer: no refresh token without access_type=offline, the granted scope.
service.on('beforeResponse', (response, req) => {
  delete response.body.refresh_token;
  response.body.scope = req.natterGrant.scope;
  accessTokens.set(response.body.access_token, req.natterGrant.user);
});

service.on('beforeUserinfo', (response, req) => {
  const token = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '')?.[1];
  const who = accessTokens.get(token);
  if (!who) {
    Object.assign(response, { statusCode: 401, body: { error: 'invalid_request', error_description: 'Invalid Credentials' } });
    return;
  }
  response.body = { sub: who.sub, email: who.email, email_verified: who.email_verified, name: who.name };
});

const send = (res, status, body, type = 'application/json') => {
  const text = type === 'application/json' ? JSON.stringify(body) : body;
  res.writeHead(status, { 'Content-Type': `${type}; charset=utf-8`, 'Cache-Control': 'no-store' }).end(text);
};
// Google shows a person an error page instead of redirecting.
const errorPage = (res, status, error, description) =>
  send(res, status, `<h1>Error ${status}: ${error}</h1><p>${description}</p>`, 'text/html');
const oauthError = (status, error, description) => ({ status, body: { error, error_description: description } });

const readBody = (req) =>
  new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c)).on('end', () => resolve(Buffer.concat(chunks).toString('utf8'))).on('error', reject);
  });

const same = (a, b) => typeof a === 'string' && a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

function discovery() {
  const at = (path) => `${issuer.url}${path}`;
  return {
    issuer: issuer.url,
    authorization_endpoint: at('/authorize'),
    token_endpoint: at('/token'),
    userinfo_endpoint: at('/userinfo'),
    revocation_endpoint: at('/revoke'),
    jwks_uri: at('/jwks'),
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    scopes_supported: ['openid', 'email', 'profile'],
    token_endpoint_auth_methods_supported: ['client_secret_post', 'client_secret_basic'],
    claims_supported: ['aud', 'email', 'email_verified', 'exp', 'iat', 'iss', 'name', 'sub', 'nonce'],
    code_challenge_methods_supported: ['plain', 'S256'],
    grant_types_supported: ['authorization_code'],
  };
}

// What /authorize refuses before the package sees it (null: fine).
function refuseAuthorize(q) {
  if (!q.get('client_id')) return [400, 'invalid_request', 'Missing required parameter: client_id'];
  if (q.get('client_id') !== clientId) return [401, 'invalid_client', 'The OAuth client was not found.'];
  const redirect = URL.canParse(q.get('redirect_uri') ?? '') ? new URL(q.get('redirect_uri')) : null;
  if (!redirect || !['http:', 'https:'].includes(redirect.protocol)) {
    return [400, 'invalid_request', 'Missing or invalid parameter: redirect_uri'];
  }
  if (!q.get('response_type')) return [400, 'invalid_request', 'Missing required parameter: response_type'];
  if (!(q.get('scope') ?? '').split(' ').includes('openid')) {
    return [400, 'invalid_scope', 'This provider speaks OpenID Connect only: scope must include openid'];
  }
  return null;
}

// Client authentication: exactly one of HTTP Basic (RFC 6749 §2.3.1: both
// parts form-urlencoded) and client_id/client_secret in the form.
function authenticateClient(req, form) {
  const basic = /^Basic (.+)$/i.exec(req.headers.authorization ?? '')?.[1];
  let id = form.get('client_id');
  let secret = form.get('client_secret');
  if (basic) {
    if (secret !== null) return oauthError(400, 'invalid_request', 'Client authentication with more than one method.');
    const decoded = Buffer.from(basic, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const unescape = (s) => decodeURIComponent(s.replaceAll('+', ' '));
    if (colon < 0) return oauthError(401, 'invalid_client', 'Unauthorized');
    const basicId = unescape(decoded.slice(0, colon));
    if (id !== null && id !== basicId) return oauthError(400, 'invalid_request', 'client_id does not match the Basic credentials.');
    [id, secret] = [basicId, unescape(decoded.slice(colon + 1))];
  }
  if (!id) return oauthError(400, 'invalid_request', 'Could not determine client ID from request.');
  if (id !== clientId) return oauthError(401, 'invalid_client', 'The OAuth client was not found.');
  if (secret === null) return oauthError(400, 'invalid_request', 'client_secret is missing.');
  if (!same(secret, clientSecret)) return oauthError(401, 'invalid_client', 'Unauthorized');
  return null;
}

// What /token refuses before the package sees it; on success the grant.
function checkToken(req, form) {
  if (!/^application\/x-www-form-urlencoded/i.test(req.headers['content-type'] ?? '')) {
    return { refused: oauthError(400, 'invalid_request', 'The request body must be application/x-www-form-urlencoded.') };
  }
  const refused = authenticateClient(req, form);
  if (refused) return { refused };
  if (form.get('grant_type') !== 'authorization_code') {
    return { refused: oauthError(400, 'unsupported_grant_type', `Invalid grant_type: ${form.get('grant_type') ?? ''}`) };
  }
  const code = form.get('code');
  if (!code) return { refused: oauthError(400, 'invalid_request', 'Missing required parameter: code') };
  const grant = grants.get(code);
  grants.delete(code); // single use, whatever happens next
  if (!grant || grant.clientId !== clientId || Date.now() - grant.issuedAt > CODE_TTL_MS) {
    return { refused: oauthError(400, 'invalid_grant', 'Malformed auth code.') };
  }
  const redirectUri = form.get('redirect_uri');
  if (!redirectUri) return { refused: oauthError(400, 'invalid_request', 'Missing parameter: redirect_uri') };
  if (redirectUri !== grant.redirectUri) return { refused: oauthError(400, 'redirect_uri_mismatch', 'Bad Request') };
  const verifier = form.get('code_verifier');
  if (grant.challenge !== undefined) {
    if (!verifier) return { refused: oauthError(400, 'invalid_grant', 'Missing code verifier.') };
    const derived = grant.method === 'S256' ? createHash('sha256').update(verifier).digest('base64url') : verifier;
    if (!/^[A-Za-z0-9\-._~]{43,128}$/.test(verifier) || derived !== grant.challenge) {
      return { refused: oauthError(400, 'invalid_grant', 'Invalid code verifier.') };
    }
  } else if (verifier) {
    return { refused: oauthError(400, 'invalid_grant', 'code_verifier given, but /authorize had no code_challenge.') };
  }
  return { grant };
}

// POST /__test/user {sub, email, name, email_verified}: whom the next /authorize signs in.
// POST /__test/tamper {aud?, expired?, nonce?, email_verified?}: changes to the next ID token.
async function control(req, res, path) {
  let body;
  try {
    body = JSON.parse(await readBody(req));
  } catch {
    return send(res, 400, { error: 'the body must be JSON' });
  }
  if (req.method !== 'POST' || typeof body !== 'object' || body === null) return send(res, 400, { error: 'POST a JSON object' });
  if (path === '/__test/user') {
    const { sub, email, name, email_verified } = body;
    if (typeof sub !== 'string' || typeof email_verified !== 'boolean') return send(res, 400, { error: 'sub and email_verified are required' });
    user = { sub, email, name, email_verified };
  } else if (path === '/__test/tamper') {
    tamper = body;
  } else {
    return send(res, 404, { error: 'no such control' });
  }
  res.writeHead(204).end();
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer.url);
    if (url.pathname.startsWith('/__test/')) return await control(req, res, url.pathname);
    if (req.method === 'GET' && url.pathname === '/.well-known/openid-configuration') return send(res, 200, discovery());
    if (req.method === 'GET' && url.pathname === '/authorize') {
      const refused = refuseAuthorize(url.searchParams);
      if (refused) return errorPage(res, ...refused);
    }
    if (url.pathname === '/token') {
      if (req.method !== 'POST') return send(res, 405, { error: 'invalid_request', error_description: 'POST only' });
      // The body is read here, so the package's body parser finds the stream
      // finished and keeps this req.body.
      const form = new URLSearchParams(await readBody(req));
      const { refused, grant } = checkToken(req, form);
      if (refused) return send(res, refused.status, refused.body);
      req.body = Object.fromEntries(form);
      req.natterGrant = grant;
    }
    service.requestHandler(req, res);
  } catch (e) {
    console.error('provider.js:', e);
    send(res, 500, { error: 'server_error', error_description: String(e) });
  }
});

server.listen(0, '127.0.0.1', () => {
  issuer.url = `http://127.0.0.1:${server.address().port}`;
  console.log(`listening ${issuer.url}`);
});

if (fstatSync(0).isFIFO()) {
  process.stdin.on('end', () => process.exit(0)).resume();
}
