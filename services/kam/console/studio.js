// The console's studio pages, seed 004's blobs and providers (see app.js for the route contract).
export const routes = [];
