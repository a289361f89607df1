// A JavaScript plugin built from wit/ by the stock componentize-js, as a
// plugin author would build it (the tests do: tests/guest_languages.rs):
// componentize-js app.js --wit wit --world-name job --disable http fetch-event
//
// Payload: any JSON. An object whose `mode` is "retry", "invalid-input" or
// "fatal" fails so, with its `message` (a retry after `delay_ms`, when
// given); anything else is returned unchanged.
const decoder = new TextDecoder();

function request(payload) {
  try {
    const value = JSON.parse(decoder.decode(payload));
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}

export function run(job) {
  const { mode, message = '', delay_ms } = request(job.payload);
  switch (mode) {
    case 'retry':
      throw { tag: 'retry', val: { message, delayMs: delay_ms === undefined ? undefined : BigInt(delay_ms) } };
    case 'invalid-input':
      throw { tag: 'invalid-input', val: message };
    case 'fatal':
      throw { tag: 'fatal', val: message };
    default:
      return job.payload;
  }
}
