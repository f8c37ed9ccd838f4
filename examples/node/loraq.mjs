// A loraq client in Node.js: submit a job, print its text as it streams, then the record.
//
//   npm install && node loraq.mjs <adapter|""> "<prompt>" [max_new_tokens]
//
// Environment: LORAQ_REDIS_URL (default redis://127.0.0.1:6379/0), LORAQ_PREFIX (default
// loraq). Only the wire protocol is used (docs/PROTOCOL.md): XADD the job, read the job's
// events stream from 0-0 until an entry with a final status, then HGETALL the record.
import { createClient } from 'redis';

const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'expired']);

async function submit(client, prefix, job) {
  // The stream entry ID is the job id when the job carries none.
  return client.xAdd(`${prefix}:jobs`, '*', { job: JSON.stringify(job) });
}

async function follow(client, prefix, jobId, onChunk, timeoutMs) {
  const key = `${prefix}:job:${jobId}:events`;
  const deadline = Date.now() + timeoutMs;
  let last = '0-0';
  while (Date.now() < deadline) {
    const reply = await client.xRead({ key, id: last }, { BLOCK: 1000, COUNT: 100 });
    for (const { id, message } of reply?.[0]?.messages ?? []) {
      last = id;
      if (message.event === 'chunk') onChunk(message.text);
      if (message.event === 'status' && FINAL.has(message.status)) return message.status;
    }
  }
  throw new Error(`job ${jobId} did not end within ${timeoutMs} ms`);
}

async function record(client, prefix, jobId) {
  const fields = await client.hGetAll(`${prefix}:job:${jobId}`);
  for (const name of ['result', 'error', 'metadata']) {
    if (fields[name]) fields[name] = JSON.parse(fields[name]);
  }
  return { id: jobId, ...fields };
}

async function main() {
  const [adapter = '', prompt = 'hello world', maxNewTokens = '32'] = process.argv.slice(2);
  const url = process.env.LORAQ_REDIS_URL || 'redis://127.0.0.1:6379/0';
  const prefix = process.env.LORAQ_PREFIX || 'loraq';
  const client = createClient({ url });
  client.on('error', (err) => console.error('redis:', err.message));
  await client.connect();
  try {
    const job = { adapter: adapter || null, prompt, params: { max_new_tokens: Number(maxNewTokens) } };
    const jobId = await submit(client, prefix, job);
    console.error(`submitted ${jobId}`);
    const status = await follow(client, prefix, jobId, (text) => process.stderr.write(text), 120000);
    process.stderr.write('\n');
    const rec = await record(client, prefix, jobId);
    console.log(JSON.stringify(rec));
    process.exitCode = status === 'succeeded' ? 0 : 1;
  } finally {
    await client.quit();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exitCode = 2;
});
