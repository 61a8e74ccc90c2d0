// A plain node:http server that binds its own port.
const http = require('http');

const port = Number(process.env.APP_PORT || 3000);
const server = http.createServer((req, res) => {
  res.end(`ok pid ${process.pid} instance ${process.env.NODE_APP_INSTANCE}\n`);
});
server.listen(port, () => console.log(`listening on ${JSON.stringify(server.address())}`));
