// The console's job pages, seed 000's job API (see app.js for the route contract).
export const routes = [];
