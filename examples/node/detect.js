#!/usr/bin/env node
// Call the detector through its front door (Envoy, TLS) from Node.js, and print JSON.
//
// Node services load the public proto at run time with @grpc/proto-loader: no generated
// code. keepCase keeps the proto's field names (x_min, class_id, default_model), the same
// names grpcurl and the Python stubs use. One client (one channel) is made at start-up and
// shared; every call carries a deadline.
//
//   npm ci --prefix examples/node
//   node examples/node/detect.js build/testdata/astronaut.png
//
// Defaults match `make run`: target localhost:8443, CA build/certs/ca.crt (paths relative
// to the directory it runs in). --cert/--key present a client certificate (mTLS).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const googleProtos = require('google-proto-files');

// The API's proto, and google/rpc/status.proto that it imports (per-image errors of
// DetectBatch and DetectStream), from google-proto-files.
const PROTOS = path.join(__dirname, '..', '..', 'protos');

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    target: { type: 'string', default: process.env.DETECT_TARGET || 'localhost:8443' },
    ca: { type: 'string', default: process.env.DETECT_CA_FILE || 'build/certs/ca.crt' },
    cert: { type: 'string', default: process.env.DETECT_CERT_FILE },
    key: { type: 'string', default: process.env.DETECT_KEY_FILE },
    timeout: { type: 'string', default: '10' }, // seconds, per call
  },
});
if (positionals.length !== 1 || Boolean(opts.cert) !== Boolean(opts.key)) {
  console.error('usage: node detect.js IMAGE [--target HOST:PORT] [--ca FILE] ' +
                '[--cert FILE --key FILE] [--timeout SECONDS]');
  process.exit(2);
}

const definition = protoLoader.loadSync('detect/v1/detect.proto', {
  includeDirs: [PROTOS, googleProtos.getProtoPath('..')],
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const { Detector } = grpc.loadPackageDefinition(definition).detect.v1;

const read = (file) => (file ? fs.readFileSync(file) : null);
const credentials = grpc.credentials.createSsl(read(opts.ca), read(opts.key), read(opts.cert));
const detector = new Detector(opts.target, credentials); // once, at start-up

// A unary call as a promise, with a deadline.
function call(method, request) {
  const deadline = new Date(Date.now() + Number(opts.timeout) * 1000);
  return new Promise((resolve, reject) => {
    detector[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function main() {
  const models = await call('ListModels', {});
  const image = positionals[0];
  const detection = await call('Detect', { image: fs.readFileSync(image) });
  console.log(JSON.stringify({ models, image, detection }, null, 2));
}

main()
  .catch((err) => {
    // err.code is the gRPC status (grpc.status); the README says which ones to retry.
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || err.code;
    console.error(`${name}: ${err.details || err.message}`);
    process.exitCode = 1;
  })
  .finally(() => detector.close());
