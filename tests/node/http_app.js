// A plain node:http server that binds its own port (or unix socket path): APP_PORT.
const http = require('http');

const raw = process.env.APP_PORT || '3000';
const where = /^\d+$/.test(raw) ? Number(raw) : raw;
const server = http.createServer((req, res) => {
  res.end(`ok pid ${process.pid} instance ${process.env.NODE_APP_INSTANCE}\n`);
});
server.listen(where, () => console.log(`listening on ${JSON.stringify(server.address())}`));
if (process.env.SECOND_PORT) {
  // A second server on a fixed port (a metrics endpoint, say): not shared.
  http.createServer((req, res) => res.end('metrics\n')).listen(Number(process.env.SECOND_PORT));
}
