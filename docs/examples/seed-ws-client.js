// The original service's WebSocket example, unchanged: it runs against fpcd as is.
// npm install ws && node seed-ws-client.js
const WebSocket = require('ws');

const ws = new WebSocket('ws://localhost:8080');

ws.on('open', () => {
  ws.send(JSON.stringify({
    type: 'SUBSCRIBE',
    serviceName: 'user-service',
    environment: 'production',
    subscriptions: ['config-updates', 'feature-flags']
  }));
});

ws.on('message', (data) => {
  const message = JSON.parse(data);

  switch (message.type) {
    case 'CONFIGURATION_UPDATE':
      console.log('Configuration updated:', JSON.stringify(message.config));
      // Apply new configuration
      break;
    case 'FEATURE_FLAG_UPDATE':
      console.log('Feature flag updated:', message.flagKey, message.enabled);
      // Update feature flag state
      break;
    case 'CONFIGURATION_RELOAD':
      console.log('Configuration reload requested');
      break;
  }
});
