// A real OpenID provider for fhirvault's identity tests: oidc-provider (OpenID Certified),
// listening on loopback only, with keys generated at each start.
//
// Clients:
//   backend-service  SMART Backend Services: client_credentials, private_key_jwt (ES256)
//   foreign-service  the same, for an organization operating from outside the EEA
//   smart-app        a public SMART app: authorization code + PKCE (S256)
// Accounts log in without a form (tests drive the flow over HTTP): `login_hint` names the
// account; `patient:<id>` is a patient, anything else a practitioner.
//
// At start it writes `provider.json` into $OIDC_STATE_DIR: the issuer, the client key the
// tests sign their assertions with, and the provider's own signing keys (so tests can forge
// tokens that differ from real ones in one claim only). Test use only.

import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';

import Provider, { errors } from 'oidc-provider';

const host = '127.0.0.1';
const port = Number(process.env.OIDC_PORT ?? 9410);
const stateDir = process.env.OIDC_STATE_DIR ?? '.';
const issuer = `http://${host}:${port}`;
// The resource server (our FHIR base URL), and one that is not us.
const audience = process.env.OIDC_AUDIENCE ?? 'https://fhir.test.example/fhir/demo';
const otherAudience = 'https://elsewhere.test.example/fhir';
const callback = 'http://127.0.0.1/callback';
// oidc-provider drops scopes it does not know: these are the SMART scopes it knows.
const scopes = [
  'system/*.rs', 'system/*.cruds', 'system/Patient.rs', 'system/Observation.rs',
  'user/*.rs', 'user/*.cruds', 'user/Patient.rs', 'patient/*.rs', 'patient/Observation.rs',
];

function keyPair(kind, options) {
  const { privateKey, publicKey } = generateKeyPairSync(kind, options);
  return { privateKey, publicKey };
}

const es = keyPair('ec', { namedCurve: 'P-256' });
const rs = keyPair('rsa', { modulusLength: 2048 });
const signingKeys = [
  { ...es.privateKey.export({ format: 'jwk' }), kid: 'es-1', alg: 'ES256', use: 'sig' },
  { ...rs.privateKey.export({ format: 'jwk' }), kid: 'rs-1', alg: 'RS256', use: 'sig' },
];
const client = keyPair('ec', { namedCurve: 'P-256' });
const clientJwk = { ...client.publicKey.export({ format: 'jwk' }), kid: 'client-1', alg: 'ES256', use: 'sig' };

const serviceClaims = {
  'backend-service': { tenant: 'demo', role: 'service', jurisdiction: 'FR', organization: 'Organization/hospital-1' },
  'foreign-service': { tenant: 'demo', role: 'service', jurisdiction: 'US', organization: 'Organization/abroad-1' },
};

// A SMART Backend Services client: client credentials, authenticated by a JWT it signs.
function backendService(clientId) {
  return {
    client_id: clientId,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [clientJwk] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
}

function accountClaims(accountId) {
  if (accountId.startsWith('patient:')) {
    return { tenant: 'demo', role: 'patient', patient: accountId.slice('patient:'.length), jurisdiction: 'FR' };
  }
  return { tenant: 'demo', role: 'practitioner', jurisdiction: 'FR', fhirUser: `Practitioner/${accountId}` };
}

const provider = new Provider(issuer, {
  clients: [
    ...Object.keys(serviceClaims).map(backendService),
    {
      client_id: 'smart-app',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [callback],
    },
  ],
  jwks: { keys: signingKeys },
  cookies: { keys: ['fhirvault-test-only-cookie-key'] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== audience && resource !== otherAudience) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: scopes.join(' '),
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    if (token.accountId) {
      return accountClaims(token.accountId);
    }
    return serviceClaims[token.clientId] ?? {};
  },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
});

// Log in and consent without a form: what a user would click, decided from the request.
provider.use(async (ctx, next) => {
  const match = ctx.method === 'GET' && ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!match) {
    return next();
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  let result;
  if (details.prompt.name === 'login') {
    result = { login: { accountId: details.params.login_hint ?? 'practitioner-1' } };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const missing = details.prompt.details;
    if (missing.missingOIDCScope) {
      grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    }
    for (const [resource, wanted] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(resource, wanted.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true }));
});

provider.listen(port, host, () => {
  const state = {
    issuer,
    audience,
    other_audience: otherAudience,
    callback,
    scopes,
    client_key_pem: client.privateKey.export({ type: 'pkcs8', format: 'pem' }),
    client_key_id: clientJwk.kid,
    signing_keys_pem: {
      'es-1': es.privateKey.export({ type: 'pkcs8', format: 'pem' }),
      'rs-1': rs.privateKey.export({ type: 'pkcs8', format: 'pem' }),
    },
  };
  const file = join(stateDir, 'provider.json');
  writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2), { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
  console.log(`oidc-provider listening on ${issuer}`);
});
